// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

/// @title A stable-value token for the demo and the tests of a token market
/// @notice A plain OpenZeppelin ERC-20 with EIP-2612 permits, standing in for a euro or dollar
/// stablecoin (EURe, USDC) on a development chain. The owner mints; nothing else is special.
contract DemoToken is ERC20, ERC20Permit, Ownable {
    uint8 private immutable _decimals;

    /// @param name_ token name, also the EIP-712 domain name of its permits
    /// @param symbol_ ticker shown by wallets and Home Assistant
    /// @param decimals_ digits of the smallest unit (6 like USDC, 18 like EURe)
    constructor(string memory name_, string memory symbol_, uint8 decimals_)
        ERC20(name_, symbol_)
        ERC20Permit(name_)
        Ownable(msg.sender)
    {
        _decimals = decimals_;
    }

    /// @notice Create `amount` smallest units for `to`. Only the owner (the deployer) can.
    function mint(address to, uint256 amount) external onlyOwner {
        _mint(to, amount);
    }

    /// @inheritdoc ERC20
    function decimals() public view override returns (uint8) {
        return _decimals;
    }
}
