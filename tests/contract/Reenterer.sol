// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @dev The part of the market the attacker uses.
interface IEnergyMarket {
    function createOffer(uint256 energyWh, uint256 startPricePerKWh, uint256 biddingSeconds)
        external
        returns (uint256 id);
    function bid(uint256 id, uint256 pricePerKWh, address meter) external payable;
    function withdraw() external;
    function claimAndWithdraw(uint256[] calldata ids) external;
    function escrowFor(uint256 id, uint256 pricePerKWh) external view returns (uint256);
}

/// @title Test double: a market account whose receive() calls back into the market
/// @notice Used by the withdraw tests to show that re-entering the market while it pays out gets
/// nothing extra.
contract Reenterer {
    /// @notice What receive() does with a payment.
    enum Mode {
        Accept, // keep it
        Withdraw, // call withdraw() again and let its revert bubble up
        WithdrawSwallow, // call withdraw() again and swallow its revert
        Bid // spend it on a bid (the market is in the middle of paying us)
    }

    IEnergyMarket public immutable market;
    Mode public mode;
    /// @notice Wei received, and how many payments brought it.
    uint256 public received;
    uint256 public payments;
    /// @notice Revert data of the swallowed re-entrant withdraw().
    bytes public innerError;

    uint256 private _bidId;
    uint256 private _bidPrice;
    address private _bidMeter;

    constructor(IEnergyMarket market_) {
        market = market_;
    }

    /// @notice Choose what receive() does; for `Mode.Bid`, which bid it places.
    function arm(Mode mode_, uint256 bidId, uint256 bidPrice, address bidMeter) external {
        mode = mode_;
        _bidId = bidId;
        _bidPrice = bidPrice;
        _bidMeter = bidMeter;
    }

    /// @notice Offer energy as a seller.
    function createOffer(uint256 energyWh, uint256 startPricePerKWh, uint256 biddingSeconds)
        external
        returns (uint256)
    {
        return market.createOffer(energyWh, startPricePerKWh, biddingSeconds);
    }

    /// @notice Bid with the wei sent along.
    function bid(uint256 id, uint256 pricePerKWh, address meter) external payable {
        market.bid{value: msg.value}(id, pricePerKWh, meter);
    }

    /// @notice Withdraw this contract's credit; a revert of the market bubbles up unchanged.
    function withdraw() external {
        market.withdraw();
    }

    /// @notice Claim `ids` and withdraw this contract's credit; a revert bubbles up unchanged.
    function claimAndWithdraw(uint256[] calldata ids) external {
        market.claimAndWithdraw(ids);
    }

    receive() external payable {
        received += msg.value;
        ++payments;
        Mode m = mode;
        if (m == Mode.Withdraw) {
            market.withdraw();
        } else if (m == Mode.WithdrawSwallow) {
            try market.withdraw() {}
            catch (bytes memory err) {
                innerError = err;
            }
        } else if (m == Mode.Bid) {
            market.bid{value: market.escrowFor(_bidId, _bidPrice)}(_bidId, _bidPrice, _bidMeter);
        }
    }
}
