// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @title An ERC-20 without EIP-2612 permits, whose approve behaves like USDT's
/// @notice OpenZeppelin's ERC-20, minus permits, so a bid must approve first; and like USDT, it
/// refuses to change one non-zero allowance to another (reset it to zero first).
contract PlainToken is ERC20 {
    uint8 private immutable _decimals;

    constructor(string memory name_, string memory symbol_, uint8 decimals_) ERC20(name_, symbol_) {
        _decimals = decimals_;
    }

    /// @notice Anyone may mint: a test token.
    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    function decimals() public view override returns (uint8) {
        return _decimals;
    }

    function approve(address spender, uint256 value) public override returns (bool) {
        require(value == 0 || allowance(msg.sender, spender) == 0, "approve from non-zero to non-zero allowance");
        return super.approve(spender, value);
    }
}
