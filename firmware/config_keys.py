# The configuration key table, as data. One tuple per key: (name, flags, default, lo, hi, extra)
#   INT   lo..hi accepted; extra = effective minimum (ABB clamp: a smaller value is stored but this is used),
#         0 for none; with ZERO_OFF a 0 stays 0 (it means "off") and is not clamped.
#   BOOL  lo, hi, extra unused.
#   STR   lo..hi = length bounds; extra = tuple of allowed values or None.
#   CSL   hi = max items (the <Key>MaxLength companion shows the same constant); extra = allowed items or None.
# Defaults follow the reference charger (seed-abb-terra-ac.md) where it names one, else digest §3.2 "impl.".
# Order is the GetConfiguration order. Tuples of constants: on a board with frozen modules they live in flash.
from micropython import const

INT = const(0)
BOOL = const(1)
STR = const(2)
CSL = const(3)
TYPE = const(3)       # mask
READ = const(4)       # shown by GetConfiguration
WRITE = const(8)      # changeable by ChangeConfiguration
DEVICE = const(16)    # installer setting: not an OCPP key, set_device/provision.json only
REBOOT = const(32)    # takes effect after a reboot
ZERO_OFF = const(64)  # INT: 0 means "off" and escapes the clamp
CONN = const(128)     # CSL: items may carry a "<connectorId>." prefix (ConnectorPhaseRotation)
PHASE = const(256)    # CSL: measurands may carry a ".L1"/".L2"/".L3" phase suffix (digest §7 Q7)
SECRET = const(512)   # never shown, never logged (AuthorizationKey)

R = READ
RW = READ | WRITE
W = WRITE

# Device capacities (DESIGN §3 "named constants so a bigger board can raise them").
LOCAL_LIST_MAX = const(16)
SEND_LOCAL_LIST_MAX = const(8)
SCHEDULE_MAX_PERIODS = const(3)
STACK_LEVEL_MAX = const(8)
PROFILES_MAX = const(8)
MEASURANDS_MAX = const(8)
NUMBER_OF_CONNECTORS = const(1)
GET_CONFIG_MAX_KEYS = const(80)  # >= the visible keys (tests check), so one GetConfiguration returns all

# What the meter model and the EVSE can report. Adding one here needs the metering code to produce it.
MEASURANDS = ("Energy.Active.Import.Register", "Power.Active.Import", "Current.Import", "Voltage",
              "Current.Offered", "Power.Offered")
PHASED = ("Power.Active.Import", "Current.Import", "Voltage")
PHASES = ("L1", "L2", "L3")
PROFILES = ("Core", "FirmwareManagement", "LocalAuthListManagement", "Reservation", "SmartCharging",
            "RemoteTrigger")
ROTATIONS = ("NotApplicable", "Unknown", "RST", "RTS", "SRT", "STR", "TRS", "TSR")
RATE_UNITS = ("Current", "Power")
METER_MODELS = ("SDM630", "SDM120", "SDM72", "ABB_B23")
VARIANTS = ("socket", "cable")

_MV_DEFAULT = "Energy.Active.Import.Register,Power.Active.Import,Current.Import,Voltage,Current.Offered"
_DAY = const(86400)

KEYS = (
    # ---- Core ---------------------------------------------------------------------------------------
    ("AllowOfflineTxForUnknownId", BOOL | RW, False, 0, 0, None),
    ("AuthorizationCacheEnabled", BOOL | RW, True, 0, 0, None),
    ("AuthorizeRemoteTxRequests", BOOL | RW, False, 0, 0, None),
    ("BlinkRepeat", INT | RW, 3, 0, 100, 0),
    ("ClockAlignedDataInterval", INT | RW, 0, 0, _DAY, 0),
    ("ConnectionTimeOut", INT | RW, 120, 1, 3600, 0),
    ("ConnectorPhaseRotation", CSL | RW | CONN, "0.Unknown,1.Unknown", 0, NUMBER_OF_CONNECTORS + 1, ROTATIONS),
    ("ConnectorPhaseRotationMaxLength", INT | R, NUMBER_OF_CONNECTORS + 1, 0, 0, 0),
    ("GetConfigurationMaxKeys", INT | R, GET_CONFIG_MAX_KEYS, 0, 0, 0),
    # ABB: below 10 accepted but 10 used (0 too: a heartbeat is never switched off).
    ("HeartbeatInterval", INT | RW, 120, 0, _DAY, 10),
    ("LightIntensity", INT | RW, 100, 0, 100, 0),
    ("LocalAuthorizeOffline", BOOL | RW, True, 0, 0, None),
    ("LocalPreAuthorize", BOOL | RW, False, 0, 0, None),
    ("MaxEnergyOnInvalidId", INT | RW, 0, 0, 1000000, 0),
    ("MeterValuesAlignedData", CSL | RW | PHASE, "Energy.Active.Import.Register", 0, MEASURANDS_MAX, MEASURANDS),
    ("MeterValuesAlignedDataMaxLength", INT | R, MEASURANDS_MAX, 0, 0, 0),
    ("MeterValuesSampledData", CSL | RW | PHASE, _MV_DEFAULT, 0, MEASURANDS_MAX, MEASURANDS),
    ("MeterValuesSampledDataMaxLength", INT | R, MEASURANDS_MAX, 0, 0, 0),
    # ABB: 0 or 4-65534; 1-3 accepted but 4 used.
    ("MeterValueSampleInterval", INT | RW | ZERO_OFF, 30, 0, 65534, 4),
    ("MinimumStatusDuration", INT | RW, 0, 0, 3600, 0),
    ("NumberOfConnectors", INT | R, NUMBER_OF_CONNECTORS, 0, 0, 0),
    ("ResetRetries", INT | RW, 0, 0, 10, 0),
    ("StopTransactionOnEVSideDisconnect", BOOL | RW, True, 0, 0, None),
    ("StopTransactionOnInvalidId", BOOL | RW, True, 0, 0, None),
    ("StopTxnAlignedData", CSL | RW | PHASE, "", 0, MEASURANDS_MAX, MEASURANDS),
    ("StopTxnAlignedDataMaxLength", INT | R, MEASURANDS_MAX, 0, 0, 0),
    ("StopTxnSampledData", CSL | RW | PHASE, "", 0, MEASURANDS_MAX, MEASURANDS),
    ("StopTxnSampledDataMaxLength", INT | R, MEASURANDS_MAX, 0, 0, 0),
    ("SupportedFeatureProfiles", CSL | R, ",".join(PROFILES), 0, len(PROFILES), PROFILES),
    ("SupportedFeatureProfilesMaxLength", INT | R, len(PROFILES), 0, 0, 0),
    # ABB retries forever; a bound keeps a poisoned message from blocking the queue (digest §3.2 impl.).
    ("TransactionMessageAttempts", INT | RW, 3, 1, 100, 0),
    ("TransactionMessageRetryInterval", INT | RW, 60, 1, 3600, 0),
    ("UnlockConnectorOnEVSideDisconnect", BOOL | RW, True, 0, 0, None),
    # On by default: a ping deadline is what finds a dead link (DESIGN §7). Negative -> Rejected (lo = 0).
    ("WebSocketPingInterval", INT | RW, 60, 0, _DAY, 0),
    # ---- LocalAuthListManagement --------------------------------------------------------------------
    ("LocalAuthListEnabled", BOOL | RW, True, 0, 0, None),
    ("LocalAuthListMaxLength", INT | R, LOCAL_LIST_MAX, 0, 0, 0),
    ("SendLocalListMaxLength", INT | R, SEND_LOCAL_LIST_MAX, 0, 0, 0),
    # ---- Reservation --------------------------------------------------------------------------------
    ("ReserveConnectorZeroSupported", BOOL | R, True, 0, 0, None),
    # ---- SmartCharging ------------------------------------------------------------------------------
    ("ChargeProfileMaxStackLevel", INT | R, STACK_LEVEL_MAX, 0, 0, 0),
    ("ChargingScheduleAllowedChargingRateUnit", CSL | R, "Current,Power", 0, 2, RATE_UNITS),
    ("ChargingScheduleMaxPeriods", INT | R, SCHEDULE_MAX_PERIODS, 0, 0, 0),
    ("ConnectorSwitch3to1PhaseSupported", BOOL | R, False, 0, 0, None),
    ("MaxChargingProfilesInstalled", INT | R, PROFILES_MAX, 0, 0, 0),
    # ---- Security whitepaper: the Basic-auth password, write-only (digest §1.7, §7 Q4) ---------------
    ("AuthorizationKey", STR | W | SECRET, None, 16, 40, None),
    # ---- Vendor keys (shown by GetConfiguration, changeable) ----------------------------------------
    ("ResponseTimeout", INT | RW, 30, 5, 300, 0),          # s to wait for a CALLRESULT
    ("ReconnectBackoffMin", INT | RW, 5, 1, 3600, 0),      # s, first reconnect wait (doubles, with jitter)
    ("ReconnectBackoffMax", INT | RW, 300, 1, _DAY, 0),    # s, cap of the reconnect wait
    ("SendBootOnReconnect", BOOL | RW, False, 0, 0, None),  # digest §7 Q2: default boot only
    # Free vend: charge without authorisation, transactions under this idTag (DESIGN §2 "free-vend mode").
    ("FreeVendEnabled", BOOL | RW, False, 0, 0, None),
    ("FreeVendIdTag", STR | RW, "FreeVend", 1, 20, None),
    # ---- Device settings (installer; provision.json; hidden from OCPP) ------------------------------
    ("CentralSystemUrl", STR | DEVICE, "", 0, 512, None),
    ("ChargeBoxId", STR | DEVICE, "", 0, 48, None),
    ("Password", STR | DEVICE | SECRET, "", 0, 64, None),
    ("CentralSystemCa", STR | DEVICE, "", 0, 8192, None),  # PEM; kept in config.json (one root is ~2 KB)
    ("MeterModel", STR | DEVICE | REBOOT, "SDM630", 0, 16, METER_MODELS),
    ("MeterUnit", INT | DEVICE | REBOOT, 1, 1, 247, 0),     # Modbus address range
    ("Variant", STR | DEVICE | REBOOT, "socket", 0, 8, VARIANTS),
    ("MaxCurrent", INT | DEVICE, 32, 6, 80, 0),             # installation limit, A (IEC 61851 PWM range)
    ("Pins", STR | DEVICE | REBOOT, "", 0, 1024, None),     # JSON object: board pin map
)
