// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @dev The part of the market the books read.
interface IEnergyMarket {
    struct AccountPage {
        uint256 credit;
        uint256 bidEscrow;
        uint256[] ids;
        uint256 unclaimedWei;
        uint256 escrowWei;
        uint256 nextCursor;
    }

    function accountOf(address account, uint256 cursor, uint256 limit) external view returns (AccountPage memory);
}

/// @title Test helper: what a market holds for a list of accounts, read in one call
/// @notice Never deployed: the tests run its code in an eth_call with a state override, so that a
/// conservation check costs one call instead of one per account and page.
contract Books {
    /// @notice The escrows plus the credits of `accounts` in `market`: every page of accountOf.
    function held(IEnergyMarket market, address[] calldata accounts, uint256 pageSize)
        external
        view
        returns (uint256 total)
    {
        for (uint256 i; i < accounts.length; ++i) {
            uint256 cursor;
            do {
                IEnergyMarket.AccountPage memory page = market.accountOf(accounts[i], cursor, pageSize);
                if (cursor == 0) total += page.credit + page.bidEscrow;
                total += page.unclaimedWei + page.escrowWei;
                cursor = page.nextCursor;
            } while (cursor != 0);
        }
    }
}
