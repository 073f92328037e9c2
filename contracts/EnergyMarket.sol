// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";

/// @title Energy-Kart energy market
/// @notice Peer-to-peer auctions of household solar surplus, delivered over a metered connection and
/// paid per kWh from the buyer's escrow. Meter readings are EIP-712 messages signed by the meter
/// itself, so whoever relays them (the oracle) cannot forge or alter them.
/// The market settles in one currency, fixed at deployment: the chain's native coin, or an ERC-20
/// token (a stablecoin in practice). Amounts named `...Wei` are in the currency's smallest unit.
/// @dev Offer and connection share one id and one record: a connection is an awarded offer.
/// Every state-changing function costs the same whatever the number of offers, users or meters:
/// lists are doubly linked through the records, and payments are derived from a meter's cumulative
/// reading instead of being pushed on each reading, so an accepted reading writes one storage slot.
contract EnergyMarket {
    using SafeERC20 for IERC20;

    // ------------------------------------------------------------------ types

    /// @notice Where an offer / connection record is in its life.
    enum Status {
        Bidding, // offer open for bids
        Cancelled, // withdrawn by the seller before any bid
        Expired, // bidding ended without a bid
        Active, // connection open: the buyer draws energy
        Closed, // the buyer closed it; readings up to the close settle during the grace window
        Completed, // the cap was delivered
        Released // closed and settled; the rest of the escrow went back to the buyer
    }

    /// @notice Why `settle` skipped a reading.
    enum SkipReason {
        None,
        FutureTimestamp, // signed for a time after the current block (plus clock skew)
        BadSignature, // malformed signature, or not signed by the meter it names
        UnknownMeter, // never registered, or revoked
        NotNewer, // timestamp not after the last accepted one, or cumulative decreased (replay)
        OutOfRange, // cumulativeWh above MAX_READING_WH
        Malformed // bits the signature does not cover (88..95 of the packed word) are set
    }

    /// @notice A meter reading as the meter signed it (EIP-712 type `Reading`), packed into three
    /// words to keep calldata small: `reading` = meter << 96 | cumulativeWh << 40 | timestamp, and
    /// the signature in its EIP-2098 compact form (r, yParity << 255 | s).
    struct SignedReading {
        uint256 reading;
        bytes32 r;
        bytes32 vs;
    }

    /// @dev One record per offer; the same record is the connection once awarded. Four slots.
    struct Record {
        // slot 0, written by createOffer
        address seller;
        uint24 energyWh; // the offer's energy, and the connection's cap
        uint40 biddingEnds;
        uint32 openPrev; // open-offers list
        // slot 1, written by createOffer
        uint72 price; // highest bid (wei per kWh), or 0 while there is none
        uint72 startPrice;
        Status status;
        uint32 openNext;
        uint32 sellerPrev; // seller's list
        uint32 sellerNext;
        // slot 2, written by bid
        address buyer; // highest bidder, then the buyer
        uint32 meterId;
        uint32 buyerPrev; // buyer's list
        uint32 buyerNext;
        // slot 3, written when the connection queues behind another or ends
        uint32 meterPrev; // the meter's queue of connections, oldest first
        uint32 meterNext;
        uint40 closedAt; // set by the close while queued; a head's close time is kept in its meter's
        // state until the connection ends (one slot write less for the buyer's close)
        uint32 deliveredWh; // final delivered energy once Completed or Released
        uint32 claimedWh; // energy already paid into the seller's credit
        uint48 baselineWh; // the meter's reading at the award
        uint40 awardedAt; // when it was awarded (kept here only while queued)
    }

    /// @dev The one slot an accepted reading writes: the meter's last reading and the connection it
    /// is filling (the head of its queue).
    struct MeterState {
        uint48 lastWh;
        uint40 lastTs;
        bool registered;
        uint32 head;
        uint48 headEndWh; // the cumulative reading at which the head connection is full
        uint40 headClosedAt; // when the head connection was closed (its record gets it at the end), 0 while open
        uint40 headAwardedAt; // a reading taken at or before this time is the head's baseline
    }

    struct MeterInfo {
        address owner;
        uint32 id;
        uint32 tail; // newest connection in the meter's queue
        uint16 queued; // connections in the meter's queue (at most MAX_METER_CONNECTIONS)
    }

    /// @dev credit: withdrawable wei; bidEscrow: wei escrowed by the account's highest bids;
    /// head: first id of the account's list of open offers and connections; used: set on first use
    /// and never cleared, so the slot never returns to zero and a returning trader pays the cheap
    /// non-zero storage write instead of the 22,100 gas one.
    struct Account {
        uint120 credit;
        uint96 bidEscrow;
        uint32 head;
        bool used;
    }

    struct Counters {
        uint32 lastId;
        uint32 openHead;
        uint32 openTail;
        uint32 openCount;
        uint32 meterCount;
    }

    /// @notice An offer as an app shows it.
    struct OfferView {
        uint256 id;
        address seller;
        uint256 energyWh;
        uint256 startPricePerKWh;
        uint256 highestPricePerKWh; // 0 while there is no bid
        address highestBidder;
        uint256 biddingEnds;
        uint256 minNextBidPerKWh;
        Status status;
    }

    /// @notice A connection as an app shows it, with its delivery and payment up to the last reading.
    struct ConnectionView {
        uint256 id;
        address seller;
        address buyer;
        address meter;
        uint256 pricePerKWh;
        uint256 capWh;
        uint256 deliveredWh;
        uint256 escrowWei; // the buyer's escrow left in the connection
        uint256 paidWei; // paid to the seller so far (claimed or not)
        uint256 closedAt;
        Status status;
        bool delivering; // the meter is filling this connection now
    }

    /// @notice One page of an account's open offers and connections, with its money. `credit` and
    /// `bidEscrow` are the account's own; `unclaimedWei` and `escrowWei` sum over this page's ids.
    struct AccountPage {
        uint256 credit; // withdrawable now by `withdraw`
        uint256 bidEscrow; // escrowed by the account's highest bids
        uint256[] ids; // open offers and connections (as seller or buyer), newest first
        uint256 unclaimedWei; // payment for energy delivered on the page's connections as seller, not yet credited
        uint256 escrowWei; // what is left of the escrow of the page's connections as buyer
        uint256 nextCursor; // pass it as `cursor` for the next page; 0 when this is the last
    }

    struct MeterView {
        address owner;
        uint256 id;
        bool registered;
        uint256 lastWh;
        uint256 lastTimestamp;
        uint256 fillingConnection;
    }

    // ------------------------------------------------------------------ constants

    /// @notice ERC-165 id that identifies an Energy-Kart market, version 1.
    bytes4 public constant MARKET_INTERFACE_ID = bytes4(keccak256("EnergyKart.EnergyMarket.v1"));
    bytes4 private constant _ERC165_ID = 0x01ffc9a7;
    string private constant _NAME = "Energy-Kart";
    string private constant _VERSION = "1";
    bytes32 private constant _DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    /// @notice EIP-712 type hash of a meter reading.
    bytes32 public constant READING_TYPEHASH =
        keccak256("Reading(address meter,uint64 cumulativeWh,uint64 timestamp)");
    uint256 private constant _HALF_CURVE_ORDER = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0;
    /// @notice The longest bidding period an offer may ask for.
    uint256 public constant MAX_BIDDING_SECONDS = 30 days;
    /// @notice The largest cumulative reading accepted: a connection's end (reading + cap) must still
    /// fit the 48 bits it is stored in. 2^48 Wh is 281 TWh, far beyond any meter's lifetime.
    uint256 public constant MAX_READING_WH = type(uint48).max - type(uint32).max;
    /// @notice How far ahead of the block a reading's timestamp may be (meter clocks drift).
    uint256 public constant MAX_CLOCK_SKEW = 5 minutes;
    /// @notice The most connections one meter may have open at once. A reading ends at most this
    /// many, so the work it costs `settle` is bounded whatever its buyer does.
    uint256 public constant MAX_METER_CONNECTIONS = 8;
    /// @notice The largest offer, in Wh (16.7 MWh, far above a household's daily surplus).
    uint256 public constant MAX_OFFER_WH = type(uint24).max;
    /// @notice Timesteps after its award during which a connection that has delivered nothing can
    /// be closed only by its buyer; after them its seller may close it too.
    uint256 public constant IDLE_TIMESTEPS = 96;

    /// @notice The currency of escrows, credits and prices: address(0) for the chain's native coin,
    /// else the ERC-20 token.
    address public immutable currency;
    /// @notice Settlement period in seconds; also the grace window after a close.
    uint256 public immutable timestep;
    /// @notice A bid must exceed the highest one by at least this much (wei per kWh).
    uint256 public immutable minBidIncrement;

    uint256 private immutable _cachedChainId;
    bytes32 private immutable _cachedDomainSeparator;

    // ------------------------------------------------------------------ storage

    address public registrar;
    Counters private _counters;
    mapping(uint256 id => Record) private _records;
    mapping(address meter => MeterState) private _meterState;
    mapping(address meter => MeterInfo) private _meterInfo;
    mapping(uint256 meterId => address meter) private _meterKey;
    mapping(address account => Account) private _accounts;
    bool private transient _locked;

    // ------------------------------------------------------------------ events

    /// @notice The registrar role moved.
    event RegistrarTransferred(address indexed previousRegistrar, address indexed newRegistrar);
    /// @notice A meter was registered to an owner.
    event MeterRegistered(address indexed meter, address indexed owner, uint256 meterId);
    /// @notice A meter was revoked; its readings are skipped from now on.
    event MeterRevoked(address indexed meter);
    /// @notice A seller offered energy.
    event OfferCreated(
        uint256 indexed id, address indexed seller, uint256 energyWh, uint256 startPricePerKWh, uint256 biddingEnds
    );
    /// @notice The seller withdrew an offer that had no bid.
    event OfferCancelled(uint256 indexed id);
    /// @notice A bid became the highest; `escrowWei` was locked with it.
    event BidPlaced(
        uint256 indexed id, address indexed bidder, address meter, uint256 pricePerKWh, uint256 escrowWei
    );
    /// @notice A bidder was outbid; their escrow became withdrawable credit.
    event Outbid(uint256 indexed id, address indexed bidder, uint256 refundWei);
    /// @notice Bidding ended without a bid.
    event OfferExpired(uint256 indexed id);
    /// @notice Why `finalize` refused to award an offer to its highest bidder.
    enum AwardRefusal {
        MeterNotOwned, // the bid's meter was revoked or registered to another owner meanwhile
        MeterQueueFull // the bid's meter has MAX_METER_CONNECTIONS connections open
    }

    /// @notice The highest bid could not be awarded; its escrow became the bidder's credit and
    /// the offer expired (an `OfferExpired` event follows).
    event AwardRefused(
        uint256 indexed id, address indexed bidder, address meter, uint256 refundWei, AwardRefusal reason
    );
    /// @notice An offer was awarded: a connection opened between seller and buyer.
    event ConnectionOpened(
        uint256 indexed id,
        address indexed seller,
        address indexed buyer,
        address meter,
        uint256 pricePerKWh,
        uint256 capWh,
        uint256 baselineWh
    );
    /// @notice Readings of one batch were accepted and their energy billed to the meters'
    /// connections. Each entry packs one reading: meter << 96 | cumulativeWh << 40 | timestamp.
    event ReadingsAccepted(uint256[] readings);
    /// @notice A reading in a batch was skipped; the rest of the batch went on.
    event ReadingSkipped(address indexed meter, uint256 cumulativeWh, uint256 timestamp, SkipReason reason);
    /// @notice Payment for delivered energy moved from the buyer's escrow into the seller's credit.
    event PaymentClaimed(uint256 indexed id, address indexed seller, uint256 deliveredWh, uint256 amountWei);
    /// @notice The buyer closed a connection.
    event ConnectionClosed(uint256 indexed id, address indexed buyer, uint256 closedAt);
    /// @notice A connection ended: delivered its cap (`completed`) or was released after a close.
    event ConnectionEnded(
        uint256 indexed id, uint256 deliveredWh, uint256 paidWei, uint256 refundWei, bool completed
    );
    /// @notice Credit was paid out.
    event Withdrawn(address indexed account, uint256 amountWei);

    // ------------------------------------------------------------------ errors

    error NotRegistrar(address caller);
    error ZeroAddress();
    error MeterAlreadyRegistered(address meter);
    error MeterNotRegistered(address meter);
    error InvalidEnergy(uint256 energyWh);
    error InvalidPrice(uint256 pricePerKWh);
    error InvalidBiddingTime(uint256 biddingSeconds, uint256 maxSeconds);
    error UnknownOffer(uint256 id);
    error WrongStatus(uint256 id, Status status);
    error BiddingOver(uint256 id, uint256 biddingEnds);
    error BiddingNotOver(uint256 id, uint256 biddingEnds);
    error BidTooLow(uint256 minPricePerKWh);
    error WrongEscrow(uint256 requiredWei, uint256 sentWei);
    error NotMeterOwner(address meter, address owner);
    error MeterNeverReported(address meter);
    error MeterHasConnections(address meter);
    error MeterQueueFull(address meter, uint256 maxConnections);
    error ConnectionNotIdle(uint256 id, uint256 idleAt);
    error SelfTrade();
    error NotSeller(uint256 id);
    error NotBuyer(uint256 id);
    error OfferHasBids(uint256 id);
    error GraceNotOver(uint256 id, uint256 releasableAt);
    error NothingToWithdraw();
    error TransferFailed(address to, uint256 amountWei);
    error NotAToken(address currency);
    error NotATokenMarket();
    error TokenAmountMismatch(uint256 expected, uint256 received);
    error Reentrancy();

    // ------------------------------------------------------------------ modifiers

    modifier onlyRegistrar() {
        if (msg.sender != registrar) revert NotRegistrar(msg.sender);
        _;
    }

    modifier nonReentrant() {
        if (_locked) revert Reentrancy();
        _locked = true;
        _;
        _locked = false;
    }

    /// @param registrar_ the meter operator allowed to register and revoke meters
    /// @param timestep_ settlement period and grace window, in seconds
    /// @param minBidIncrement_ minimal step between bids, in wei per kWh
    /// @param currency_ address(0) to settle in the native coin, else the ERC-20 token's address
    constructor(address registrar_, uint256 timestep_, uint256 minBidIncrement_, address currency_) {
        if (registrar_ == address(0)) revert ZeroAddress();
        if (currency_ != address(0) && currency_.code.length == 0) revert NotAToken(currency_);
        currency = currency_;
        registrar = registrar_;
        timestep = timestep_;
        minBidIncrement = minBidIncrement_;
        _cachedChainId = block.chainid;
        _cachedDomainSeparator = _buildDomainSeparator();
        emit RegistrarTransferred(address(0), registrar_);
    }

    // ------------------------------------------------------------------ identity

    /// @notice ERC-165: true for ERC-165 itself and for `MARKET_INTERFACE_ID`.
    function supportsInterface(bytes4 interfaceId) external pure returns (bool) {
        return interfaceId == _ERC165_ID || interfaceId == MARKET_INTERFACE_ID;
    }

    /// @notice ERC-5267: the EIP-712 domain that meters sign readings for.
    function eip712Domain()
        external
        view
        returns (
            bytes1 fields,
            string memory name,
            string memory version,
            uint256 chainId,
            address verifyingContract,
            bytes32 salt,
            uint256[] memory extensions
        )
    {
        return (hex"0f", _NAME, _VERSION, block.chainid, address(this), bytes32(0), new uint256[](0));
    }

    /// @notice The EIP-712 domain separator for this chain and contract.
    function domainSeparator() public view returns (bytes32) {
        return block.chainid == _cachedChainId ? _cachedDomainSeparator : _buildDomainSeparator();
    }

    // ------------------------------------------------------------------ registrar

    /// @notice Hand the registrar role to another account.
    function transferRegistrar(address newRegistrar) external onlyRegistrar {
        if (newRegistrar == address(0)) revert ZeroAddress();
        emit RegistrarTransferred(registrar, newRegistrar);
        registrar = newRegistrar;
    }

    /// @notice Register `meter` (the key the meter signs with) to `owner`. A revoked meter can be
    /// registered again once its connections have ended; its last reading is kept, so old readings
    /// cannot be replayed.
    function registerMeter(address meter, address owner) external onlyRegistrar {
        if (meter == address(0) || owner == address(0)) revert ZeroAddress();
        MeterState storage st = _meterState[meter];
        if (st.registered) revert MeterAlreadyRegistered(meter);
        MeterInfo storage info = _meterInfo[meter];
        // A new owner's consumption must never be billed to the previous owner's connections.
        if (info.tail != 0) revert MeterHasConnections(meter);
        uint32 id = info.id;
        if (id == 0) {
            id = ++_counters.meterCount;
            info.id = id;
            _meterKey[id] = meter;
        }
        info.owner = owner;
        st.registered = true;
        emit MeterRegistered(meter, owner, id);
    }

    /// @notice Revoke `meter`: its readings are skipped and it can no longer back a bid.
    /// Open connections on it can still be closed and released by their buyer.
    function revokeMeter(address meter) external onlyRegistrar {
        MeterState storage st = _meterState[meter];
        if (!st.registered) revert MeterNotRegistered(meter);
        st.registered = false;
        _meterInfo[meter].owner = address(0);
        emit MeterRevoked(meter);
    }

    // ------------------------------------------------------------------ offers

    /// @notice Offer `energyWh` of energy, bids starting at `startPricePerKWh` wei per kWh, open
    /// for `biddingSeconds`.
    /// @return id the offer id (also the connection id once awarded)
    function createOffer(uint256 energyWh, uint256 startPricePerKWh, uint256 biddingSeconds)
        external
        returns (uint256 id)
    {
        if (energyWh == 0 || energyWh > MAX_OFFER_WH) revert InvalidEnergy(energyWh);
        if (startPricePerKWh == 0 || startPricePerKWh > type(uint72).max) revert InvalidPrice(startPricePerKWh);
        if (biddingSeconds == 0 || biddingSeconds > MAX_BIDDING_SECONDS) {
            revert InvalidBiddingTime(biddingSeconds, MAX_BIDDING_SECONDS);
        }
        Counters memory c = _counters;
        uint32 newId = ++c.lastId;
        uint40 ends = uint40(block.timestamp + biddingSeconds);
        Account storage acct = _accounts[msg.sender];
        uint32 sellerNext = acct.head;

        Record storage rec = _records[newId];
        rec.seller = msg.sender;
        rec.energyWh = uint24(energyWh);
        rec.biddingEnds = ends;
        rec.openPrev = c.openTail;
        rec.startPrice = uint72(startPricePerKWh);
        rec.sellerNext = sellerNext;

        if (c.openTail == 0) c.openHead = newId;
        else _records[c.openTail].openNext = newId;
        c.openTail = newId;
        ++c.openCount;
        _counters = c;

        if (sellerNext != 0) _setPrev(sellerNext, msg.sender, newId);
        acct.head = newId;
        acct.used = true;

        emit OfferCreated(newId, msg.sender, energyWh, startPricePerKWh, ends);
        return newId;
    }

    /// @notice Withdraw an offer that has no bid yet. Only its seller can.
    function cancelOffer(uint256 id) external {
        Record storage rec = _existing(id);
        if (rec.seller != msg.sender) revert NotSeller(id);
        if (rec.status != Status.Bidding) revert WrongStatus(id, rec.status);
        if (rec.buyer != address(0)) revert OfferHasBids(id);
        rec.status = Status.Cancelled;
        _removeOpen(rec);
        _unlink(uint32(id), rec.seller);
        emit OfferCancelled(id);
    }

    /// @notice Bid `pricePerKWh` wei per kWh on offer `id`, for delivery to `meter` (owned by the
    /// bidder, reported at least one reading, fewer than MAX_METER_CONNECTIONS connections open).
    /// The escrow is exactly `escrowFor(id, pricePerKWh)`: sent as value in a native market; in a
    /// token market pulled with `transferFrom` (approve it first, or use `bidWithPermit`) and no
    /// value sent. The previous highest bidder's escrow becomes their withdrawable credit. The
    /// meter must still be the bidder's, with room in its queue, at the award; otherwise the escrow
    /// returns to the bidder's credit and the offer expires.
    function bid(uint256 id, uint256 pricePerKWh, address meter) external payable {
        uint256 required = _placeBid(id, pricePerKWh, meter);
        if (currency != address(0)) _pullExact(required);
    }

    /// @notice `bid` in a token market, with an EIP-2612 permit for exactly the escrow in the same
    /// transaction. A permit that fails (already used by a front-runner, or unsupported) is passed
    /// over: the bid then goes through if the allowance covers the escrow.
    function bidWithPermit(
        uint256 id,
        uint256 pricePerKWh,
        address meter,
        uint256 deadline,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external {
        if (currency == address(0)) revert NotATokenMarket();
        uint256 required = _placeBid(id, pricePerKWh, meter);
        try IERC20Permit(currency).permit(msg.sender, address(this), required, deadline, v, r, s) {} catch {}
        _pullExact(required);
    }

    /// @dev Checks a bid and records it; returns the escrow it must bring.
    function _placeBid(uint256 id, uint256 pricePerKWh, address meter) private returns (uint256 required) {
        Record storage rec = _existing(id);
        if (rec.status != Status.Bidding) revert WrongStatus(id, rec.status);
        if (block.timestamp >= rec.biddingEnds) revert BiddingOver(id, rec.biddingEnds);
        if (rec.seller == msg.sender) revert SelfTrade();
        uint256 minPrice = _minNextBid(rec);
        if (pricePerKWh < minPrice) revert BidTooLow(minPrice);
        if (pricePerKWh > type(uint72).max) revert InvalidPrice(pricePerKWh);
        required = _escrow(pricePerKWh, rec.energyWh);
        uint256 expectedValue = currency == address(0) ? required : 0;
        if (msg.value != expectedValue) revert WrongEscrow(expectedValue, msg.value);
        MeterInfo storage info = _meterInfo[meter];
        if (info.owner != msg.sender) revert NotMeterOwner(meter, info.owner);
        // The award takes the meter's last reading as the connection's baseline; without one, the
        // meter's whole history would be billed to the connection.
        if (_meterState[meter].lastTs == 0) revert MeterNeverReported(meter);
        if (info.queued >= MAX_METER_CONNECTIONS) revert MeterQueueFull(meter, MAX_METER_CONNECTIONS);

        address previous = rec.buyer;
        if (previous != address(0)) {
            uint256 refund = _escrow(rec.price, rec.energyWh);
            Account storage prev = _accounts[previous];
            prev.bidEscrow -= uint96(refund);
            prev.credit += uint120(refund);
            emit Outbid(id, previous, refund);
        }
        rec.price = uint72(pricePerKWh);
        rec.buyer = msg.sender;
        rec.meterId = info.id;
        Account storage bidder = _accounts[msg.sender];
        bidder.bidEscrow += uint96(required);
        bidder.used = true;
        emit BidPlaced(id, msg.sender, meter, pricePerKWh, required);
    }

    /// @notice After bidding ends, award offer `id` to its highest bidder (opening a connection),
    /// or expire it when nobody bid. When the bid's meter is no longer the bidder's (revoked or
    /// registered to another owner) or already has MAX_METER_CONNECTIONS connections, no connection
    /// opens: the escrow becomes the bidder's credit (`AwardRefused`) and the offer expires, so the
    /// seller can offer the energy again. Anyone can call it; the oracle's keeper does.
    function finalize(uint256 id) external {
        Record storage rec = _existing(id);
        if (rec.status != Status.Bidding) revert WrongStatus(id, rec.status);
        if (block.timestamp < rec.biddingEnds) revert BiddingNotOver(id, rec.biddingEnds);
        uint32 id32 = uint32(id);
        _removeOpen(rec);
        address buyer = rec.buyer;
        if (buyer == address(0)) {
            rec.status = Status.Expired;
            _unlink(id32, rec.seller);
            emit OfferExpired(id);
            return;
        }
        address meter = _meterKey[rec.meterId];
        MeterInfo storage info = _meterInfo[meter];
        Account storage acct = _accounts[buyer];
        uint256 escrow = _escrow(rec.price, rec.energyWh);
        acct.bidEscrow -= uint96(escrow);
        if (info.owner != buyer || info.queued >= MAX_METER_CONNECTIONS) {
            // Never bill one owner's consumption to another's escrow, nor queue past the bound.
            acct.credit += uint120(escrow);
            rec.status = Status.Expired;
            _unlink(id32, rec.seller);
            emit AwardRefused(
                id,
                buyer,
                meter,
                escrow,
                info.owner != buyer ? AwardRefusal.MeterNotOwned : AwardRefusal.MeterQueueFull
            );
            emit OfferExpired(id);
            return;
        }
        rec.status = Status.Active;

        uint32 buyerNext = acct.head;
        rec.buyerNext = buyerNext;
        if (buyerNext != 0) _setPrev(buyerNext, buyer, id32);
        acct.head = id32;

        MeterState storage st = _meterState[meter];
        uint48 baseline = st.lastWh;
        uint32 tail = info.tail;
        if (tail == 0) {
            st.head = id32;
            st.headEndWh = baseline + rec.energyWh;
            st.headClosedAt = 0;
            st.headAwardedAt = uint40(block.timestamp);
        } else {
            Record storage last = _records[tail];
            last.meterNext = id32;
            rec.meterPrev = tail;
            rec.baselineWh = baseline;
            rec.awardedAt = uint40(block.timestamp);
        }
        info.tail = id32;
        ++info.queued;
        emit ConnectionOpened(id, rec.seller, buyer, meter, rec.price, rec.energyWh, baseline);
    }

    // ------------------------------------------------------------------ delivery

    /// @notice Settle a batch of signed meter readings. Each valid reading bills the meter's new
    /// energy to its open connections, oldest first, up to each cap. An invalid reading is skipped
    /// with a `ReadingSkipped` event; it never reverts the batch. Anyone can relay readings.
    /// The accepted readings are logged together in one `ReadingsAccepted` event.
    /// @return accepted how many readings were accepted
    function settle(SignedReading[] calldata readings) external returns (uint256 accepted) {
        bytes32 separator = domainSeparator();
        uint256 n = readings.length;
        uint256[] memory packed = new uint256[](n);
        for (uint256 i; i < n; ++i) {
            SignedReading calldata rd = readings[i];
            uint256 reading = rd.reading;
            SkipReason reason = _applyReading(reading, rd.r, rd.vs, separator);
            if (reason == SkipReason.None) {
                packed[accepted++] = reading;
            } else {
                emit ReadingSkipped(
                    address(uint160(reading >> 96)), (reading >> 40) & 0xffffffffffff, reading & 0xffffffffff, reason
                );
            }
        }
        if (accepted != 0) {
            assembly {
                mstore(packed, accepted)
            }
            emit ReadingsAccepted(packed);
        }
    }

    /// @notice The buyer stops drawing power. Readings timestamped up to now still settle during
    /// the grace window (one timestep); then `release` returns the rest of the escrow.
    /// The seller may close a connection too once IDLE_TIMESTEPS have passed since its award with
    /// nothing delivered, so a buyer who never draws cannot hold the seller's offer open forever.
    function closeConnection(uint256 id) external {
        Record storage rec = _existing(id);
        if (rec.status < Status.Active || (rec.buyer != msg.sender && rec.seller != msg.sender)) revert NotBuyer(id);
        if (rec.status != Status.Active) revert WrongStatus(id, rec.status);
        MeterState storage st = _meterState[_meterKey[rec.meterId]];
        bool isHead = st.head == uint32(id);
        if (rec.buyer != msg.sender) {
            uint256 idleAt = uint256(isHead ? st.headAwardedAt : rec.awardedAt) + IDLE_TIMESTEPS * timestep;
            if (block.timestamp <= idleAt || (isHead && st.lastWh > st.headEndWh - rec.energyWh)) {
                revert ConnectionNotIdle(id, idleAt);
            }
        }
        rec.status = Status.Closed;
        // The head's close time lives in the meter's slot, which every reading reads; the record
        // gets it when the connection ends, in the write that ending makes anyway.
        if (isHead) st.headClosedAt = uint40(block.timestamp);
        else rec.closedAt = uint40(block.timestamp);
        emit ConnectionClosed(id, rec.buyer, block.timestamp);
    }

    /// @notice After the grace window of a closed connection, pay the seller for the energy
    /// delivered up to the close and return the rest of the escrow to the buyer as credit.
    /// Anyone can call it; the oracle's keeper does.
    function release(uint256 id) external {
        Record storage rec = _existing(id);
        if (rec.status != Status.Closed) revert WrongStatus(id, rec.status);
        address meter = _meterKey[rec.meterId];
        MeterState memory st = _meterState[meter];
        bool isHead = st.head == uint32(id);
        uint256 releasableAt = uint256(isHead ? st.headClosedAt : rec.closedAt) + timestep;
        if (block.timestamp <= releasableAt) revert GraceNotOver(id, releasableAt);
        if (isHead) {
            _endHead(st, meter, false);
            _meterState[meter] = st;
        } else {
            // Still queued behind another connection: it never received energy.
            _dequeue(rec, meter);
            _end(uint32(id), rec, 0, Status.Released);
        }
    }

    /// @notice Move the payment for energy delivered so far on connection `id` into the seller's
    /// credit. Anyone can call it; a connection that ends credits its seller by itself.
    function claim(uint256 id) external {
        Record storage rec = _existing(id);
        if (rec.status != Status.Active && rec.status != Status.Closed) revert WrongStatus(id, rec.status);
        _claim(uint32(id), rec);
    }

    /// @notice Pay out the caller's credit. Costs the same however many offers and connections the
    /// caller has: payment for energy delivered on connections still open is credited by `claim`,
    /// or in the same transaction by `claimAndWithdraw`.
    function withdraw() external nonReentrant {
        _withdraw();
    }

    /// @notice Claim the payment on connections `ids` (see `claim`; ids that are not open
    /// connections are passed over), then pay out the caller's credit.
    function claimAndWithdraw(uint256[] calldata ids) external nonReentrant {
        for (uint256 i; i < ids.length; ++i) {
            Record storage rec = _records[ids[i]];
            if (rec.status == Status.Active || rec.status == Status.Closed) _claim(uint32(ids[i]), rec);
        }
        _withdraw();
    }

    // ------------------------------------------------------------------ views

    /// @notice Wei to send with a bid of `pricePerKWh` on offer `id`: price × energy / 1000, rounded up.
    function escrowFor(uint256 id, uint256 pricePerKWh) external view returns (uint256) {
        if (pricePerKWh > type(uint72).max) revert InvalidPrice(pricePerKWh);
        return _escrow(pricePerKWh, _existing(id).energyWh);
    }

    /// @notice The lowest price per kWh the next bid on offer `id` may have.
    function minNextBid(uint256 id) external view returns (uint256) {
        return _minNextBid(_existing(id));
    }

    /// @notice The highest offer id so far (ids start at 1).
    function lastOfferId() external view returns (uint256) {
        return _counters.lastId;
    }

    /// @notice How many offers are not finalized yet: open for bids, or with bidding over and
    /// waiting for `finalize`. `openOffers` / `dueOffers` tell the two apart.
    function unfinalizedOfferCount() external view returns (uint256) {
        return _counters.openCount;
    }

    /// @notice Offer `id`.
    function getOffer(uint256 id) public view returns (OfferView memory) {
        Record storage rec = _existing(id);
        return OfferView({
            id: id,
            seller: rec.seller,
            energyWh: rec.energyWh,
            startPricePerKWh: rec.startPrice,
            highestPricePerKWh: rec.price,
            highestBidder: rec.buyer,
            biddingEnds: rec.biddingEnds,
            minNextBidPerKWh: _minNextBid(rec),
            status: rec.status
        });
    }

    /// @notice Offers open for bids now (bidding not over), oldest first. Looks at up to `limit`
    /// unfinalized offers after `afterId` (0 = from the start), so a page may hold fewer than
    /// `limit` offers, even none, while more follow: read on until `nextAfterId` is 0.
    /// @return page the open offers among those looked at
    /// @return nextAfterId pass it as `afterId` for the next page; 0 when there is none
    function openOffers(uint256 afterId, uint256 limit)
        external
        view
        returns (OfferView[] memory page, uint256 nextAfterId)
    {
        return _unfinalizedPage(afterId, limit, false);
    }

    /// @notice Offers whose bidding is over, waiting for `finalize`, oldest first; paged like
    /// `openOffers`.
    function dueOffers(uint256 afterId, uint256 limit)
        external
        view
        returns (OfferView[] memory page, uint256 nextAfterId)
    {
        return _unfinalizedPage(afterId, limit, true);
    }

    /// @notice Connection `id` (an awarded offer) with its delivery and payment so far.
    function getConnection(uint256 id) external view returns (ConnectionView memory cv) {
        Record storage rec = _existing(id);
        if (rec.status < Status.Active) revert WrongStatus(id, rec.status);
        address meter = _meterKey[rec.meterId];
        uint256 delivered = _deliveredNow(uint32(id), rec, meter);
        uint256 paid = _pay(rec.price, delivered);
        bool ended = rec.status >= Status.Completed;
        MeterState storage st = _meterState[meter];
        bool delivering = !ended && st.head == uint32(id);
        cv = ConnectionView({
            id: id,
            seller: rec.seller,
            buyer: rec.buyer,
            meter: meter,
            pricePerKWh: rec.price,
            capWh: rec.energyWh,
            deliveredWh: delivered,
            escrowWei: ended ? 0 : _escrow(rec.price, rec.energyWh) - paid,
            paidWei: paid,
            closedAt: delivering ? st.headClosedAt : rec.closedAt,
            status: rec.status,
            delivering: delivering
        });
    }

    /// @notice Wei the account can withdraw now with `withdraw` (payment for energy delivered on
    /// connections still open comes on top once claimed: see `accountOf`).
    function creditOf(address account) external view returns (uint256) {
        return _accounts[account].credit;
    }

    /// @notice The account's credit and bid escrow, and a page of up to `limit` of its open offers
    /// and connections (as seller or buyer), newest first, from `cursor` (0 = the newest) on,
    /// with what those connections hold for it: unclaimed payment as seller, escrow left as buyer.
    /// Read on with `nextCursor` until it is 0; read all pages at one block for a consistent sum.
    function accountOf(address account, uint256 cursor, uint256 limit)
        external
        view
        returns (AccountPage memory page)
    {
        Account storage acct = _accounts[account];
        page.credit = acct.credit;
        page.bidEscrow = acct.bidEscrow;
        uint32 id = cursor == 0 ? acct.head : uint32(cursor);
        if (id != cursor && cursor != 0) revert UnknownOffer(cursor);
        if (id != 0) {
            Record storage first = _existing(id);
            // Only a record in the account's list: its open offer, or an open connection of its.
            Status status = first.status;
            bool listed = status == Status.Bidding
                ? first.seller == account
                : (status == Status.Active || status == Status.Closed) && (first.seller == account || first.buyer == account);
            if (!listed) revert UnknownOffer(cursor);
        }
        page.ids = new uint256[](limit);
        uint256 n;
        while (id != 0 && n < limit) {
            Record storage rec = _records[id];
            page.ids[n++] = id;
            if (rec.seller == account) {
                if (rec.status == Status.Active || rec.status == Status.Closed) {
                    uint256 delivered = _deliveredNow(id, rec, _meterKey[rec.meterId]);
                    page.unclaimedWei += _pay(rec.price, delivered) - _pay(rec.price, rec.claimedWh);
                }
                id = rec.sellerNext;
            } else {
                uint256 delivered = _deliveredNow(id, rec, _meterKey[rec.meterId]);
                page.escrowWei += _escrow(rec.price, rec.energyWh) - _pay(rec.price, delivered);
                id = rec.buyerNext;
            }
        }
        uint256[] memory ids = page.ids;
        assembly {
            mstore(ids, n)
        }
        page.nextCursor = id;
    }

    /// @notice A meter's registration and last accepted reading.
    function meterOf(address meter) external view returns (MeterView memory) {
        MeterState storage st = _meterState[meter];
        MeterInfo storage info = _meterInfo[meter];
        return MeterView({
            owner: info.owner,
            id: info.id,
            registered: st.registered,
            lastWh: st.lastWh,
            lastTimestamp: st.lastTs,
            fillingConnection: st.head
        });
    }

    // ------------------------------------------------------------------ internals

    function _buildDomainSeparator() private view returns (bytes32) {
        return keccak256(
            abi.encode(_DOMAIN_TYPEHASH, keccak256(bytes(_NAME)), keccak256(bytes(_VERSION)), block.chainid, address(this))
        );
    }

    function _existing(uint256 id) private view returns (Record storage rec) {
        rec = _records[id];
        if (rec.seller == address(0)) revert UnknownOffer(id);
    }

    function _escrow(uint256 pricePerKWh, uint256 energyWh) private pure returns (uint256) {
        return (pricePerKWh * energyWh + 999) / 1000;
    }

    function _pay(uint256 pricePerKWh, uint256 deliveredWh) private pure returns (uint256) {
        return (pricePerKWh * deliveredWh) / 1000;
    }

    function _minNextBid(Record storage rec) private view returns (uint256) {
        return rec.buyer == address(0) ? rec.startPrice : uint256(rec.price) + minBidIncrement;
    }

    /// @dev Checks one reading and, when valid, applies it. Never reverts on bad input.
    /// This is the hot path (one call per reading), hence the assembly: it hashes and recovers in
    /// scratch memory, and in the common case (the reading only adds energy to the connection being
    /// filled) reads and writes the meter's one state slot directly.
    function _applyReading(uint256 reading, bytes32 r, bytes32 vs, bytes32 separator)
        private
        returns (SkipReason)
    {
        address meter = address(uint160(reading >> 96));
        uint256 wh = (reading >> 40) & 0xffffffffffff;
        uint256 ts = reading & 0xffffffffff;
        if (ts > block.timestamp + MAX_CLOCK_SKEW) return SkipReason.FutureTimestamp;
        if (wh > MAX_READING_WH) return SkipReason.OutOfRange;
        // The signature covers meter, cumulativeWh and timestamp only: one reading, one encoding.
        if ((reading >> 88) & 0xff != 0) return SkipReason.Malformed;
        uint256 v = (uint256(vs) >> 255) + 27;
        bytes32 s = vs & bytes32(0x7fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff);
        if (uint256(s) > _HALF_CURVE_ORDER) return SkipReason.BadSignature;
        address signer;
        bytes32 typehash = READING_TYPEHASH;
        assembly ("memory-safe") {
            let ptr := mload(0x40)
            mstore(ptr, typehash)
            mstore(add(ptr, 0x20), meter)
            mstore(add(ptr, 0x40), wh)
            mstore(add(ptr, 0x60), ts)
            let structHash := keccak256(ptr, 0x80)
            mstore(ptr, hex"1901")
            mstore(add(ptr, 0x02), separator)
            mstore(add(ptr, 0x22), structHash)
            mstore(ptr, keccak256(ptr, 0x42))
            mstore(add(ptr, 0x20), v)
            mstore(add(ptr, 0x40), r)
            mstore(add(ptr, 0x60), s)
            mstore(0x00, 0)
            if staticcall(gas(), 0x01, ptr, 0x80, 0x00, 0x20) { signer := mload(0x00) }
        }
        if (signer == address(0) || signer != meter) return SkipReason.BadSignature;

        MeterState storage stored = _meterState[meter];
        uint256 word;
        assembly {
            word := sload(stored.slot)
        }
        // Layout of MeterState (lowest bits first): lastWh 48, lastTs 40, registered 8, head 32,
        // headEndWh 48, headClosedAt 40, headAwardedAt 40.
        if ((word >> 88) & 0xff == 0) return SkipReason.UnknownMeter;
        if (ts <= (word >> 48) & 0xffffffffff || wh < word & 0xffffffffffff) return SkipReason.NotNewer;
        uint256 head = (word >> 96) & 0xffffffff;
        if (
            head == 0
                || ((word >> 176) & 0xffffffffff == 0 && wh < (word >> 128) & 0xffffffffffff && ts > word >> 216)
        ) {
            word = (word & ~uint256(0xffffffffffffffffffffff)) | (ts << 48) | wh;
            assembly {
                sstore(stored.slot, word)
            }
            return SkipReason.None;
        }

        MeterState memory st = stored;
        while (st.head != 0) {
            if (st.headClosedAt != 0 && (ts > st.headClosedAt || block.timestamp > st.headClosedAt + timestep)) {
                // Energy of this reading was drawn after the close, or came after the grace window.
                _endHead(st, meter, false);
            } else if (ts <= st.headAwardedAt) {
                // Taken at or before the award (and relayed late): this reading is the baseline.
                uint256 start = st.headEndWh - _records[st.head].energyWh;
                if (wh > start) st.headEndWh = uint48(wh + _records[st.head].energyWh);
                break;
            } else if (wh >= st.headEndWh) {
                _endHead(st, meter, true);
            } else {
                break;
            }
        }
        st.lastWh = uint48(wh);
        st.lastTs = uint40(ts);
        _meterState[meter] = st;
        return SkipReason.None;
    }

    /// @dev Ends the head connection of `st` (completed at its cap, or released at the meter's
    /// last reading) and makes the next queued connection the head. Updates `st` in memory.
    function _endHead(MeterState memory st, address meter, bool completed) private {
        uint32 id = st.head;
        Record storage rec = _records[id];
        uint256 cap = rec.energyWh;
        uint256 start = st.headEndWh - cap;
        uint256 endWh = completed ? st.headEndWh : (st.lastWh > start ? st.lastWh : start);
        if (st.headClosedAt != 0) rec.closedAt = st.headClosedAt;
        _end(id, rec, endWh - start, completed ? Status.Completed : Status.Released);

        uint32 next = rec.meterNext;
        st.head = next;
        MeterInfo storage info = _meterInfo[meter];
        --info.queued;
        if (next == 0) {
            info.tail = 0;
            st.headEndWh = 0;
            st.headClosedAt = 0;
            st.headAwardedAt = 0;
        } else {
            Record storage nrec = _records[next];
            nrec.meterPrev = 0;
            uint256 nstart = nrec.baselineWh > endWh ? nrec.baselineWh : endWh;
            st.headEndWh = uint48(nstart + nrec.energyWh);
            st.headClosedAt = nrec.status == Status.Closed ? nrec.closedAt : 0;
            st.headAwardedAt = nrec.awardedAt;
        }
    }

    /// @dev Final accounting of a connection: pays the seller for `deliveredWh`, returns the rest of
    /// the escrow to the buyer, and drops the id from both accounts' lists.
    function _end(uint32 id, Record storage rec, uint256 deliveredWh, Status status) private {
        uint256 price = rec.price;
        uint256 paid = _pay(price, deliveredWh);
        uint256 sellerShare = paid - _pay(price, rec.claimedWh);
        uint256 refund = _escrow(price, rec.energyWh) - paid;
        rec.status = status;
        rec.deliveredWh = uint32(deliveredWh);
        rec.claimedWh = uint32(deliveredWh);
        if (sellerShare != 0) {
            _accounts[rec.seller].credit += uint120(sellerShare);
            emit PaymentClaimed(id, rec.seller, deliveredWh, sellerShare);
        }
        if (refund != 0) _accounts[rec.buyer].credit += uint120(refund);
        _unlink(id, rec.seller);
        _unlink(id, rec.buyer);
        emit ConnectionEnded(id, deliveredWh, paid, refund, status == Status.Completed);
    }

    function _withdraw() private {
        Account storage acct = _accounts[msg.sender];
        uint256 amount = acct.credit;
        if (amount == 0) revert NothingToWithdraw();
        acct.credit = 0;
        emit Withdrawn(msg.sender, amount);
        if (currency == address(0)) {
            (bool ok,) = msg.sender.call{value: amount}("");
            if (!ok) revert TransferFailed(msg.sender, amount);
        } else {
            IERC20(currency).safeTransfer(msg.sender, amount);
        }
    }

    /// @dev Pulls exactly `amount` of the token from the caller. A token that delivers another
    /// amount (a transfer fee, rebasing) is refused; the lock keeps the token from re-entering
    /// the market's money paths while it runs.
    function _pullExact(uint256 amount) private {
        if (_locked) revert Reentrancy();
        _locked = true;
        IERC20 token = IERC20(currency);
        uint256 before = token.balanceOf(address(this));
        token.safeTransferFrom(msg.sender, address(this), amount);
        uint256 balance = token.balanceOf(address(this));
        if (balance != before + amount) revert TokenAmountMismatch(amount, balance > before ? balance - before : 0);
        _locked = false;
    }

    function _claim(uint32 id, Record storage rec) private {
        uint256 delivered = _deliveredNow(id, rec, _meterKey[rec.meterId]);
        uint256 amount = _pay(rec.price, delivered) - _pay(rec.price, rec.claimedWh);
        if (amount == 0) return;
        rec.claimedWh = uint32(delivered);
        _accounts[rec.seller].credit += uint120(amount);
        emit PaymentClaimed(id, rec.seller, delivered, amount);
    }

    /// @dev Energy delivered on a connection up to the meter's last accepted reading.
    function _deliveredNow(uint32 id, Record storage rec, address meter) private view returns (uint256) {
        Status status = rec.status;
        if (status == Status.Completed || status == Status.Released) return rec.deliveredWh;
        if (status < Status.Active) return 0;
        MeterState storage st = _meterState[meter];
        if (st.head != id) return 0;
        uint256 endWh = st.headEndWh;
        uint256 start = endWh - rec.energyWh;
        uint256 last = st.lastWh;
        if (last <= start) return 0;
        return (last < endWh ? last : endWh) - start;
    }

    /// @dev Removes a queued (not head) connection from its meter's queue.
    function _dequeue(Record storage rec, address meter) private {
        uint32 prev = rec.meterPrev;
        uint32 next = rec.meterNext;
        _records[prev].meterNext = next;
        MeterInfo storage info = _meterInfo[meter];
        --info.queued;
        if (next == 0) info.tail = prev;
        else _records[next].meterPrev = prev;
        rec.meterPrev = 0;
        rec.meterNext = 0;
    }

    /// @dev Looks at up to `limit` unfinalized offers after `afterId` and keeps those whose bidding
    /// is over (`due`) or not.
    function _unfinalizedPage(uint256 afterId, uint256 limit, bool due)
        private
        view
        returns (OfferView[] memory page, uint256 nextAfterId)
    {
        uint32 cursor;
        if (afterId == 0) {
            cursor = _counters.openHead;
        } else {
            Record storage from = _existing(afterId);
            if (from.status != Status.Bidding) revert WrongStatus(afterId, from.status);
            cursor = from.openNext;
        }
        uint256 count = _counters.openCount;
        page = new OfferView[](limit < count ? limit : count);
        uint256 looked;
        uint256 n;
        uint32 last;
        while (cursor != 0 && looked < page.length) {
            ++looked;
            Record storage rec = _records[cursor];
            if ((block.timestamp >= rec.biddingEnds) == due) page[n++] = getOffer(cursor);
            last = cursor;
            cursor = rec.openNext;
        }
        assembly {
            mstore(page, n)
        }
        nextAfterId = cursor == 0 ? 0 : last;
    }

    function _removeOpen(Record storage rec) private {
        uint32 prev = rec.openPrev;
        uint32 next = rec.openNext;
        Counters memory c = _counters;
        if (prev == 0) c.openHead = next;
        else _records[prev].openNext = next;
        if (next == 0) c.openTail = prev;
        else _records[next].openPrev = prev;
        --c.openCount;
        _counters = c;
        rec.openPrev = 0;
        rec.openNext = 0;
    }

    /// @dev Sets the back link of `id` in `account`'s list to `prev`.
    function _setPrev(uint32 id, address account, uint32 prev) private {
        Record storage rec = _records[id];
        if (rec.seller == account) rec.sellerPrev = prev;
        else rec.buyerPrev = prev;
    }

    /// @dev Removes `id` from `account`'s list of open offers and connections.
    function _unlink(uint32 id, address account) private {
        Record storage rec = _records[id];
        uint32 prev;
        uint32 next;
        if (rec.seller == account) {
            (prev, next) = (rec.sellerPrev, rec.sellerNext);
            (rec.sellerPrev, rec.sellerNext) = (0, 0);
        } else {
            (prev, next) = (rec.buyerPrev, rec.buyerNext);
            (rec.buyerPrev, rec.buyerNext) = (0, 0);
        }
        if (prev == 0) {
            _accounts[account].head = next;
        } else {
            Record storage p = _records[prev];
            if (p.seller == account) p.sellerNext = next;
            else p.buyerNext = next;
        }
        if (next != 0) _setPrev(next, account, prev);
    }
}
