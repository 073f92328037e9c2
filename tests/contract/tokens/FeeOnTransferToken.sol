// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @title Test double: a token that burns a fee on every transfer
/// @notice The recipient of a transfer gets `value` less `feeBasisPoints` of it (PAXG, STA and
/// some reflection tokens work this way). Minting is free of the fee. Anyone may mint or set the fee.
contract FeeOnTransferToken is ERC20 {
    uint256 public feeBasisPoints = 100;

    constructor() ERC20("Fee Euro", "FEUR") {}

    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    function setFee(uint256 basisPoints) external {
        feeBasisPoints = basisPoints;
    }

    function _update(address from, address to, uint256 value) internal override {
        uint256 fee = from == address(0) || to == address(0) ? 0 : (value * feeBasisPoints) / 10_000;
        super._update(from, to, value - fee);
        if (fee != 0) super._update(from, address(0), fee);
    }
}
