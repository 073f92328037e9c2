// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @title Test double: a token that reports failure by returning false
/// @notice While `failing`, `transfer` and `transferFrom` move nothing and return false instead of
/// reverting (as ZRX and other early tokens did). Anyone may mint or switch it.
contract FalseReturnToken is ERC20 {
    bool public failing;

    constructor() ERC20("False Euro", "XEUR") {}

    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    function setFailing(bool failing_) external {
        failing = failing_;
    }

    function transfer(address to, uint256 value) public override returns (bool) {
        return failing ? false : super.transfer(to, value);
    }

    function transferFrom(address from, address to, uint256 value) public override returns (bool) {
        return failing ? false : super.transferFrom(from, to, value);
    }
}
