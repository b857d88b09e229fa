# First boot without a configuration: a short setup on the service console (docs/decisions.md, "First boot and
# WiFi").
#
# ensure(board) runs before the application is built (firmware/app.py run()). When the board has no Central System
# URL or charge box id, or, on a board that reaches the network only through WiFi, no WiFi network, it asks for
# them on the console, checks every answer with the configuration's own rules (firmware/config.py _parse over the
# key table of firmware/config_keys.py, plus the few rules of a setup: firmware/setupcheck.py, which the web setup
# and the web page's configuration form share), stores them and returns: the charger
# then starts as usual. It unloads itself afterwards, so its code costs no heap while the charger runs.
#
# wizard() is an async function over a line reader (await reader.readline(secret) -> str) and a line writer
# (writer.write(text)), so tests drive it with fakes. Every output line starts with "? " (a question), "! " (an
# answer refused, and why) or "  " (information): a person reads them, a test waits for them. Secrets (the WiFi
# and Central System passwords) are never written back, nor logged: the summary says "set" or "none".
import asyncio
from micropython import const
from firmware import config, log, setupcheck
from firmware import config_keys as K

_TAG = "setup"
_POLL_MS = const(50)
# Stored in this order: the two that make a board count as configured go last, so a power cut in the middle of
# storing leaves a board that asks again rather than one that starts half set up.
_ORDER = ("WifiSsid", "WifiPassword", "Password", "MeterModel", "Variant", "MaxCurrent", "WebPassword",
          "WebEnabled", "CentralSystemUrl", "ChargeBoxId")
# Loaded for the setup only, dropped with it (the web page imports its modules again if it is enabled).
_SETUP_MODULES = ("firmware.provision", "firmware.setupcheck", "firmware.websetup", "firmware.web",
                  "firmware.webauth", "microdot", "microdot.microdot")


def needed(cfg, wifi_required):
    """True when the board cannot start without a setup."""
    return not cfg.get("CentralSystemUrl") or not cfg.get("ChargeBoxId") or (
        wifi_required and not cfg.get("WifiSsid"))


# ---- the dialogue ----------------------------------------------------------------------------------------

async def _ask(reader, writer, name, question, default=None, required=False, secret=False):
    """Asks until an answer passes setupcheck.check (the key's rules and a setup's): the typed value. Enter alone
    takes default (shown in brackets) when there is one, else it is the empty answer."""
    while True:
        shown = "" if default is None or default == "" else " [%s]" % default
        writer.write("? %s%s:" % (question, shown))
        text = await reader.readline(secret)
        if not secret:
            text = text.strip()
        if text == "" and default is not None:
            text = default if isinstance(default, str) else str(default)
        value, reason = setupcheck.check(name, text, required)
        if reason is None:
            return value
        writer.write("! %s" % reason)


async def _yes(reader, writer, question, default):
    while True:
        writer.write("? %s (%s):" % (question, "Y/n" if default else "y/N"))
        text = (await reader.readline(False)).strip().lower()
        if not text:
            return default
        if text in ("y", "yes"):
            return True
        if text in ("n", "no"):
            return False
        writer.write("! answer y or n")


async def _wifi(reader, writer, ssid, join, wifi_required):
    """-> (ssid, password). With join, the network is tried before the setup goes on."""
    while True:
        if wifi_required:
            ssid = await _ask(reader, writer, "WifiSsid", "WiFi network name (SSID)", ssid or None, True)
        else:
            ssid = await _ask(reader, writer, "WifiSsid",
                              "WiFi network name (SSID; Enter alone: none, this board is on a network already)",
                              ssid or None)
        if not ssid:
            return "", ""
        password = await _ask(reader, writer, "WifiPassword", "WiFi password (Enter alone: an open network)",
                              None, False, True)
        if join is None:
            return ssid, password
        writer.write("  joining %s ..." % ssid)
        ok, detail = await join(ssid, password)
        if ok:
            writer.write("  WiFi up: %s, address %s" % (ssid, detail))
            return ssid, password
        writer.write("! could not join %s: %s" % (ssid, detail))
        if await _yes(reader, writer, "Keep these WiFi settings anyway (the charger keeps trying to join)?", False):
            return ssid, password


async def wizard(reader, writer, cfg, join=None, wifi_required=True):
    """The setup dialogue: -> {key: typed value} of every answer, once the person confirms them. Nothing is
    stored here (store() does). join: async (ssid, password) -> (True, address) | (False, reason), or None."""
    writer.write("  This charger has no configuration yet. Answer each question and press Enter;")
    writer.write("  Enter alone takes the value in [brackets].")
    for line in cfg.provision_report:
        writer.write("  provision.json: %s" % line)
    a = {}
    for name in ("WifiSsid", "CentralSystemUrl", "ChargeBoxId", "MeterModel", "Variant", "MaxCurrent"):
        a[name] = cfg.get(name)
    while True:
        a["WifiSsid"], a["WifiPassword"] = await _wifi(reader, writer, a["WifiSsid"], join, wifi_required)
        a["CentralSystemUrl"] = await _ask(reader, writer, "CentralSystemUrl",
                                           "Central System URL (ws://host:port/path or wss://...)",
                                           a["CentralSystemUrl"] or None, True)
        if a["CentralSystemUrl"].startswith("wss://") and not cfg.get("CentralSystemCa"):
            writer.write("  note: wss:// needs the CA certificate of the Central System (CentralSystemCa, from "
                         "provision.json or make deploy); the charger cannot connect until it has one")
        a["ChargeBoxId"] = await _ask(reader, writer, "ChargeBoxId", "Charge box id (the Central System's name for "
                                      "this charger)", a["ChargeBoxId"] or None, True)
        a["Password"] = await _ask(reader, writer, "Password", "Central System password (Enter alone: none)",
                                   None, False, True)
        models = "|".join(K.METER_MODELS)
        a["MeterModel"] = await _ask(reader, writer, "MeterModel", "Energy meter model (%s)" % models,
                                     a["MeterModel"])
        a["Variant"] = await _ask(reader, writer, "Variant", "Connector: a socket or a fixed cable (socket|cable)",
                                  a["Variant"])
        e = K.entry(K.find("MaxCurrent"))
        a["MaxCurrent"] = await _ask(reader, writer, "MaxCurrent", "Maximum current of the installation in A "
                                     "(%d-%d)" % (e[3], e[4]), a["MaxCurrent"])
        _summary(writer, a)
        if await _yes(reader, writer, "Save this and start the charger?", True):
            return a
        writer.write("  Once more, then (Enter alone keeps an answer; passwords are asked again).")


def _summary(writer, a):
    if a["WifiSsid"]:
        writer.write("  WiFi: %s (%s)" % (a["WifiSsid"], "password set" if a["WifiPassword"] else "open network"))
    else:
        writer.write("  WiFi: none")
    writer.write("  Central System: %s as %s (%s)" % (a["CentralSystemUrl"], a["ChargeBoxId"],
                                                      "password set" if a["Password"] else "no password"))
    writer.write("  Meter %s, %s, %d A" % (a["MeterModel"], a["Variant"], a["MaxCurrent"]))


def store(cfg, answers):
    """Stores the answers through the configuration (its rules apply once more); raises OSError when the flash
    will not take them."""
    for name in _ORDER:
        if name in answers:
            status, reason = cfg.set_device(name, answers[name])
            if status == config.REJECTED:
                raise OSError("the setup could not be stored: %s" % reason)


# ---- on a board ------------------------------------------------------------------------------------------

class Console:
    """The board's service console (board.poll_console) as the wizard's line reader and writer."""

    def __init__(self, board):
        self._board = board

    async def readline(self, secret=False):
        while True:
            line = self._board.poll_console(secret)
            if line is not None:
                return line
            await asyncio.sleep_ms(_POLL_MS)

    def write(self, text):
        print(text)


async def _join(board, ssid, password):
    from firmware.wifi import Link

    link = Link(board, ssid, password)
    if await link.join():
        return True, link.ip
    return False, link.error


def ensure(board):
    """Runs the setup when the board needs one (needed()); True if it ran. Nothing else runs meanwhile: the
    contactor stays open and the pilot at +12 V, as the board left them. Unloads this module when done."""
    try:
        cfg = config.Config(board.state_dir)
        wifi_required = board.wifi_required
        if not needed(cfg, wifi_required):
            return False
        log.info(_TAG, "no configuration: setup on the console")
        con = Console(board)
        answers = asyncio.run(_setup(board, cfg, con, lambda s, p: _join(board, s, p), wifi_required))
        log.info(_TAG, "stored: charge box %s, Central System %s" % (answers["ChargeBoxId"],
                                                                     answers["CentralSystemUrl"]))
        return True
    finally:
        _unload()


async def _setup(board, cfg, con, join, wifi_required):
    """The console setup and, on a board without a WiFi network configured, the setup over the web beside it
    (firmware/websetup.py: the board's own access point): the first one finished configures the board. -> the
    answers, stored."""
    done = asyncio.Event()
    result = []

    async def console():
        try:
            a = await wizard(con, con, cfg, join, wifi_required)
            store(cfg, a)
            result.append(a)
        except Exception as e:  # a flash that will not take the answers: raised below, as before
            result.append(e)
        done.set()

    async def over_web():
        from firmware import websetup
        a = await websetup.serve(board, cfg, join, lambda answers: store(cfg, answers), wifi_required)
        if a is not None:
            con.write("  set up over the web")
            result.append(a)
            done.set()

    tasks = [asyncio.create_task(console())]
    if not cfg.get("WifiSsid"):
        tasks.append(asyncio.create_task(over_web()))
    await done.wait()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)  # the web setup closes its server and access point
    if isinstance(result[0], Exception):
        raise result[0]
    return result[0]


def _unload():
    from firmware import unload
    unload(*_SETUP_MODULES)
