# The configuration key table, as data: one line per key in the string _T, decoded on demand by entry().
#
# A line is "Name Tflags default lo hi extra"; lo, hi and extra may be left off (0, 0, and 0 for INT / none).
#   T      I = INT, B = BOOL, S = STR, L = CSL (comma-separated list)
#   flags  r READ, w WRITE, d DEVICE, b REBOOT, z ZERO_OFF, c CONN, p PHASE, s SECRET (meanings below)
#   default  BOOL 0/1; "-" is the empty string, "~" is None (no default)
#   INT   lo..hi accepted; extra = effective minimum (ABB clamp: a smaller value is stored but this is used),
#         0 for none; with ZERO_OFF a 0 stays 0 (it means "off") and is not clamped.
#   STR   lo..hi = length bounds; extra = the name of a set in _SETS holding the allowed values, or none.
#   CSL   hi = max items (the <Key>MaxLength companion shows the same constant); extra = allowed items or none.
# Defaults follow the reference charger (seed-abb-terra-ac.md) where it names one, else digest §3.2 "impl.".
# Order is the GetConfiguration order.
#
# Why a string: as ~60 tuples of 6 the table cost ~14 KB of heap once loaded from .mpy (a tuple and a string
# object per key); as one string it costs its length. Entries are decoded only when a key is looked up, and
# firmware.config caches the effective values it hands out. KEYS (the tuples) is still there for tools and
# tests, built when asked for. Bytes, not str: MicroPython finds the byte offset of a str index by walking the
# UTF-8 from the start, so every find() and slice deep in a 5 KB str cost ~5 us on the host (1 ms on an ESP32)
# and a walk of the whole table ~1.2 ms; in bytes an offset is an offset.
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

# Device capacities (DESIGN §3 "named constants so a bigger board can raise them"). The table below spells the
# same numbers out (tests/mpy/test_config.py checks that they agree).
LOCAL_LIST_MAX = const(16)
SEND_LOCAL_LIST_MAX = const(8)
SCHEDULE_MAX_PERIODS = const(3)
STACK_LEVEL_MAX = const(8)
PROFILES_MAX = const(8)
MEASURANDS_MAX = const(8)
NUMBER_OF_CONNECTORS = const(1)
GET_CONFIG_MAX_KEYS = const(80)  # >= the visible keys (tests check), so one GetConfiguration returns all

# Named value sets, one per line: "NAME item,item,...". Read as tuples through this module's attributes
# (config_keys.MEASURANDS) or as a table line's extra. MEASURANDS is what the meter model and the EVSE can
# report: adding one here needs the metering code to produce it. PHASED measurands take a PHASES suffix.
_SETS = (
    b"\nMEASURANDS Energy.Active.Import.Register,Power.Active.Import,Current.Import,Voltage,Current.Offered,"
    b"Power.Offered\n"
    b"PHASED Power.Active.Import,Current.Import,Voltage\n"
    b"PHASES L1,L2,L3\n"
    b"PROFILES Core,FirmwareManagement,LocalAuthListManagement,Reservation,SmartCharging,RemoteTrigger\n"
    b"ROTATIONS NotApplicable,Unknown,RST,RTS,SRT,STR,TRS,TSR\n"
    b"RATE_UNITS Current,Power\n"
    b"METER_MODELS SDM630,SDM120,SDM72,ABB_B23\n"
    b"VARIANTS socket,cable\n"
    b"LOAD_MODES off,fixed,load,solar\n"
)

# Adjacent literals: the compiler joins them into one constant, so the comments cost nothing.
_T = (
    b"\n"
    # ---- Core ---------------------------------------------------------------------------------------
    b"AllowOfflineTxForUnknownId Brw 0\n"
    b"AuthorizationCacheEnabled Brw 1\n"
    b"AuthorizeRemoteTxRequests Brw 0\n"
    b"BlinkRepeat Irw 3 0 100\n"
    b"ClockAlignedDataInterval Irw 0 0 86400\n"
    b"ConnectionTimeOut Irw 120 1 3600\n"
    b"ConnectorPhaseRotation Lrwc 0.Unknown,1.Unknown 0 2 ROTATIONS\n"  # hi = NUMBER_OF_CONNECTORS + 1
    b"ConnectorPhaseRotationMaxLength Ir 2\n"
    b"GetConfigurationMaxKeys Ir 80\n"
    # ABB: below 10 accepted but 10 used (0 too: a heartbeat is never switched off).
    b"HeartbeatInterval Irw 120 0 86400 10\n"
    b"LightIntensity Irw 100 0 100\n"
    b"LocalAuthorizeOffline Brw 1\n"
    b"LocalPreAuthorize Brw 0\n"
    b"MaxEnergyOnInvalidId Irw 0 0 1000000\n"
    b"MeterValuesAlignedData Lrwp Energy.Active.Import.Register 0 8 MEASURANDS\n"
    b"MeterValuesAlignedDataMaxLength Ir 8\n"
    b"MeterValuesSampledData Lrwp "
    b"Energy.Active.Import.Register,Power.Active.Import,Current.Import,Voltage,Current.Offered 0 8 MEASURANDS\n"
    b"MeterValuesSampledDataMaxLength Ir 8\n"
    # ABB: 0 or 4-65534; 1-3 accepted but 4 used.
    b"MeterValueSampleInterval Irwz 30 0 65534 4\n"
    b"MinimumStatusDuration Irw 0 0 3600\n"
    b"NumberOfConnectors Ir 1\n"
    b"ResetRetries Irw 0 0 10\n"
    b"StopTransactionOnEVSideDisconnect Brw 1\n"
    b"StopTransactionOnInvalidId Brw 1\n"
    b"StopTxnAlignedData Lrwp - 0 8 MEASURANDS\n"
    b"StopTxnAlignedDataMaxLength Ir 8\n"
    b"StopTxnSampledData Lrwp - 0 8 MEASURANDS\n"
    b"StopTxnSampledDataMaxLength Ir 8\n"
    b"SupportedFeatureProfiles Lr "
    b"Core,FirmwareManagement,LocalAuthListManagement,Reservation,SmartCharging,RemoteTrigger 0 6 PROFILES\n"
    b"SupportedFeatureProfilesMaxLength Ir 6\n"
    # ABB retries forever; a bound keeps a poisoned message from blocking the queue (digest §3.2 impl.).
    b"TransactionMessageAttempts Irw 3 1 100\n"
    b"TransactionMessageRetryInterval Irw 60 1 3600\n"
    b"UnlockConnectorOnEVSideDisconnect Brw 1\n"
    # On by default: a ping deadline is what finds a dead link (DESIGN §7). Negative -> Rejected (lo = 0).
    b"WebSocketPingInterval Irw 60 0 86400\n"
    # ---- LocalAuthListManagement --------------------------------------------------------------------
    b"LocalAuthListEnabled Brw 1\n"
    b"LocalAuthListMaxLength Ir 16\n"
    b"SendLocalListMaxLength Ir 8\n"
    # ---- Reservation --------------------------------------------------------------------------------
    b"ReserveConnectorZeroSupported Br 1\n"
    # ---- SmartCharging ------------------------------------------------------------------------------
    b"ChargeProfileMaxStackLevel Ir 8\n"
    b"ChargingScheduleAllowedChargingRateUnit Lr Current,Power 0 2 RATE_UNITS\n"
    b"ChargingScheduleMaxPeriods Ir 3\n"
    b"ConnectorSwitch3to1PhaseSupported Br 0\n"
    b"MaxChargingProfilesInstalled Ir 8\n"
    # ---- Security whitepaper: the Basic-auth password, write-only (digest §1.7, §7 Q4) ---------------
    b"AuthorizationKey Sws ~ 16 40\n"
    # ---- Vendor keys (shown by GetConfiguration, changeable) ----------------------------------------
    b"ResponseTimeout Irw 30 5 300\n"        # s to wait for a CALLRESULT
    b"ReconnectBackoffMin Irw 5 1 3600\n"    # s, first reconnect wait (doubles, with jitter)
    b"ReconnectBackoffMax Irw 300 1 86400\n"  # s, cap of the reconnect wait
    b"SendBootOnReconnect Brw 0\n"           # digest §7 Q2: default boot only
    # Free vend: charge without authorisation, transactions under this idTag (DESIGN §2 "free-vend mode").
    b"FreeVendEnabled Brw 0\n"
    b"FreeVendIdTag Srw FreeVend 1 20\n"
    # ---- Device settings (installer; provision.json; hidden from OCPP) ------------------------------
    b"CentralSystemUrl Sd - 0 512\n"
    b"ChargeBoxId Sd - 0 48\n"
    b"Password Sds - 0 64\n"
    b"CentralSystemCa Sd - 0 8192\n"       # PEM; kept in config.json (one root is ~2 KB)
    # CA certificates (PEM, one or more) trusted for https firmware downloads and diagnostics uploads, on top of
    # CentralSystemCa: a file server or CDN is often signed by another CA than the Central System.
    b"TransferCa Sd - 0 8192\n"
    b"MeterModel Sdb SDM630 0 16 METER_MODELS\n"
    b"MeterUnit Idb 1 1 247\n"              # Modbus address range
    b"Variant Sdb socket 0 8 VARIANTS\n"
    b"MaxCurrent Id 32 6 80\n"              # installation limit, A (IEC 61851 PWM range)
    b"Pins Sdb - 0 1024\n"                  # JSON object: board pin map
    b"Ventilation Bd 0\n"                   # the site ventilates: IEC 61851 state D may charge
    # WiFi (firmware/wifi.py): the network the board joins; empty = none (the simulation uses its host's).
    # The password: empty (the default) = an open network; the setup (firmware/provision.py) also checks the WPA2
    # form, 8-63 characters or 64 hex digits. Secret: never shown or logged, like Password.
    b"WifiSsid Sdb - 0 32\n"
    b"WifiPassword Sdsb - 0 64\n"
    # MQTT (firmware/mqttfront.py, README "MQTT"): an empty URL is off, and then the front end is never imported.
    # Changes apply at once: the front end reconnects with the new settings. MqttCa: the PEM of the CA that
    # signed the broker's certificate (mqtts:// needs it). MqttTopic: the base topic, empty = evse/<ChargeBoxId>;
    # 64 bytes leave room for the longest suffix under lib/mqtt.py's 118-byte topics. MqttInterval: s between
    # state publications without a change, 0 = on change only. MqttIdTag: publish the session's id tag
    # (personal data: off by default).
    b"MqttUrl Sd - 0 200\n"
    b"MqttUser Sd - 0 64\n"
    b"MqttPassword Sds - 0 64\n"
    b"MqttCa Sd - 0 8192\n"
    b"MqttTopic Sd - 0 64\n"
    b"MqttDiscovery Bd 1\n"
    b"MqttInterval Id 30 0 3600\n"
    b"MqttIdTag Bd 0\n"
    # External current limit fed over MQTT (firmware/loadlimit.py): off | fixed | load | solar. Currents in A,
    # times in s. LoadFallback: the limit while the input is stale (0 = pause: no input, no extra load).
    b"LoadMode Sd off 0 8 LOAD_MODES\n"
    b"LoadFuse Id 25 6 400\n"
    b"LoadPhases Id 3 1 3\n"
    b"LoadFallback Id 0 0 80\n"
    b"LoadStale Id 60 5 3600\n"
    b"LoadStartDelay Id 60 0 3600\n"
    b"LoadStopDelay Id 300 0 3600\n"
    # The web page (firmware/web.py; imported only when enabled, so off costs no heap). WebBind: the address the
    # server listens on, 0.0.0.0 = every interface. WebPassword is stored hashed (firmware/webauth.py:
    # "s2k$<bytes>$<salt hex>$<SHA-256 hex>"); a plaintext from provision.json is hashed when the page starts.
    b"WebEnabled Bdb 0\n"
    b"WebPort Idb 80 1 65535\n"
    b"WebBind Sdb 0.0.0.0 7 15\n"
    b"WebPassword Sds - 0 128\n"
)


def find(name):
    """Offset of the key's line in the table (exact spelling first, then any case), -1 when unknown."""
    if not name or " " in name or "\n" in name:
        return -1
    t = _T
    b = name.encode()
    n = len(b)
    i = t.find(b, 1)
    while i > 0:  # the exact spelling at a line's start, without building "\n<name> " (boot looks up many keys)
        if t[i - 1] == 10 and t[i + n] == 32:
            return i
        i = t.find(b, i + 1)
    low = b.lower()
    i = 1
    while i < len(t):
        j = t.find(b" ", i)
        if j - i == n and t[i:j].lower() == low:
            return i
        i = t.find(b"\n", j) + 1
    return -1


def offsets():
    """The line offsets of every key, in table order."""
    t = _T
    i = 1
    while i < len(t):
        yield i
        i = t.find(b"\n", i) + 1


def _kind(t, j, k):
    # The flags of the spec t[j + 1:k] ("Irwz"): bytes.find of an int is not in every port's MicroPython (the
    # WebAssembly one refuses it) and a slice per letter is garbage, so the letters are compared as ints.
    ch = t[j + 1]
    flags = 0 if ch == 73 else 1 if ch == 66 else 2 if ch == 83 else 3  # I B S L
    c = j + 2
    while c < k:
        ch = t[c]
        flags |= (READ if ch == 114 else WRITE if ch == 119 else DEVICE if ch == 100 else REBOOT if ch == 98
                  else ZERO_OFF if ch == 122 else CONN if ch == 99 else PHASE if ch == 112 else SECRET)  # rwdbzcps
        c += 1
    return flags


def heads():
    """(name, flags, default as its table text) of every key, in table order."""
    t = _T
    i = 1
    while i < len(t):
        j = t.find(b" ", i)
        e = t.find(b"\n", j)
        k = t.find(b" ", j + 1)
        if k < 0 or k > e:
            k = e
        flags = _kind(t, j, k)
        d = t.find(b" ", k + 1)
        if d < 0 or d > e:
            d = e
        yield t[i:j].decode(), flags, t[k + 1:d].decode()
        i = e + 1


def write_json(buf, data):
    """GetConfiguration's configurationKey array of every visible key, written as JSON by buf.write() (a JsonBuf)
    straight from the table's bytes. data: {name: typed value} of the keys that differ from their defaults
    (firmware/config.py). As a list of 49 dicts and its json.dumps text the answer left ~15 KB of garbage per
    call, four collections of the whole heap at app.py's threshold; this leaves a memoryview per name and
    default (~3 KB on the 64-bit host)."""
    import json

    t = _T
    mv = memoryview(t)
    # The JSON around the table's text, as one constant: each bytes constant of a module costs ~32 B of heap
    # for as long as the module is loaded, even from ROMFS, and this one is loaded at boot.
    f = memoryview(b'{"key":"","readonly":false,"value":","readonly":true,"value":"true""false"')
    key = f[:8]  # {"key":"
    ro = f[8:35]  # ","readonly":false,"value":
    rw = f[35:61]  # ","readonly":true,"value":
    yes = f[61:67]  # "true"
    no = f[67:74]  # "false"
    empty = f[7:9]  # ""
    quote = f[61:62]
    w = buf.write
    over = {}
    for name, v in data.items():
        over[find(name)] = v
    w(b"[")
    first = True
    i = 1
    while i < len(t):  # heads(), inlined: a tuple per key is garbage too
        j = t.find(b" ", i)
        e = t.find(b"\n", j)
        k = t.find(b" ", j + 1)
        if k < 0 or k > e:
            k = e
        flags = _kind(t, j, k)
        k += 1
        d = t.find(b" ", k)
        if d < 0 or d > e:
            d = e
        if flags & READ and not flags & DEVICE:
            if not first:
                w(b",")
            first = False
            w(key)
            w(mv[i:j])
            w(ro if flags & WRITE else rw)
            ty = flags & TYPE
            if i in over:
                v = over[i]
                w(json.dumps(("true" if v else "false") if ty == BOOL else str(v) if ty == INT else v).encode())
            elif ty == BOOL:
                w(yes if t[k] == 49 else no)  # 49: "1"
            elif d == k + 1 and t[k] == 45:  # "-": the empty string
                w(empty)
            else:
                w(quote)
                w(mv[k:d])  # table defaults are plain ASCII without quotes (tests/mpy/test_config.py)
                w(quote)
            w(b"}")
        i = e + 1
    w(b"]")


def entry(i):
    """(name, flags, default, lo, hi, extra) of the line at offset i."""
    f = _T[i:_T.find(b"\n", i)].decode().split(" ")
    spec = f[1]
    t = "IBSL".find(spec[0])
    flags = t
    for c in spec[1:]:
        flags |= 4 << "rwdbzcps".find(c)
    d = f[2]
    if t == INT:
        d = int(d)
    elif t == BOOL:
        d = d == "1"
    else:
        d = None if d == "~" else "" if d == "-" else d
    n = len(f)
    x = f[5] if n > 5 else None
    if t == INT:
        x = int(x) if x else 0
    elif x:
        x = _set(x)
    return f[0], flags, d, int(f[3]) if n > 3 else 0, int(f[4]) if n > 4 else 0, x


def _set(name):
    i = _SETS.find(b"\n" + name.encode() + b" ") if name else -1
    if i < 0:
        return None
    i += len(name) + 2
    return tuple(_SETS[i:_SETS.find(b"\n", i)].decode().split(","))


def __getattr__(name):
    # KEYS as tuples only when something asks for it (tests, tools, a caller's own table): ~14 KB while held.
    if name == "KEYS":
        return tuple(entry(i) for i in offsets())
    v = _set(name)
    if v is None:
        raise AttributeError(name)
    return v

