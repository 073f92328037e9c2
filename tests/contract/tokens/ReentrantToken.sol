// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @title Test double: a token whose transfers call back into the market that settles in it
/// @notice Armed with a call, each `transfer` and `transferFrom` makes it into the market, as this
/// contract, once the balances have moved (like an ERC-777 hook): a bid while the market pulls an
/// escrow, a withdraw while it pays out. The contract is also a market account of its own (`act`),
/// so the call it makes back has credit to take and bids to place. Anyone may mint.
contract ReentrantToken is ERC20 {
    address public market;
    /// @notice Calldata of the call back into the market; empty: no call.
    bytes public reentry;
    /// @notice Swallow the call's revert (kept in `innerError`) instead of bubbling it up.
    bool public swallow;
    /// @notice Calls made back into the market so far, and the revert data of the last swallowed one.
    uint256 public reentries;
    bytes public innerError;
    bool private _inside;

    constructor() ERC20("Reentrant Euro", "REUR") {}

    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    function setMarket(address market_) external {
        market = market_;
    }

    /// @notice Make every transfer call the market with `data` (empty: disarm).
    function arm(bytes calldata data, bool swallow_) external {
        reentry = data;
        swallow = swallow_;
    }

    /// @notice Act as a market account: approve it `allowance` of this contract's own tokens, then
    /// call it with `data`; a revert bubbles up.
    function act(uint256 allowance, bytes calldata data) external {
        _approve(address(this), market, allowance);
        (bool ok, bytes memory err) = market.call(data);
        if (!ok) _bubble(err);
    }

    function transfer(address to, uint256 value) public override returns (bool) {
        super.transfer(to, value);
        _reenter();
        return true;
    }

    function transferFrom(address from, address to, uint256 value) public override returns (bool) {
        super.transferFrom(from, to, value);
        _reenter();
        return true;
    }

    function _reenter() private {
        if (_inside || reentry.length == 0) return;
        _inside = true;
        ++reentries;
        (bool ok, bytes memory err) = market.call(reentry);
        if (!ok) {
            if (!swallow) _bubble(err);
            innerError = err;
        }
        _inside = false;
    }

    function _bubble(bytes memory err) private pure {
        assembly {
            revert(add(err, 32), mload(err))
        }
    }
}
