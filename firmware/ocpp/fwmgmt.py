# FirmwareManagement profile (OCPP 1.6 §5.8, §5.18, §4.4, §4.5): UpdateFirmware and GetDiagnostics are answered
# at once, and the work is done in a task each by the engines firmware/ota/update.py and firmware/diag/upload.py
# (docs/ota.md, "The application's side"). This module is loaded at the first of those calls, or at boot when a
# stored update has work (firmware.ota.owed()), and leaves the heap again with the engines once both are idle.
import asyncio
import sys

from firmware import log
from firmware.ocpp import rpc
from firmware.ocpp.rpc import STR, INT, TIME

_TAG = "fw"
ACTIONS = ("UpdateFirmware", "GetDiagnostics")
_UPDATE = (("location", STR, True, None), ("retrieveDate", TIME, True, None), ("retries", INT, False, 0),
           ("retryInterval", INT, False, 0))
_DIAG = (("location", STR, True, None), ("retries", INT, False, 0), ("retryInterval", INT, False, 0),
         ("startTime", TIME, False, None), ("stopTime", TIME, False, None))

_lock = None  # one transfer at a time: the firmware download and the diagnostics upload share it
_held = False  # an update waits to install: the idle connector is made Unavailable


def register(session, app):
    """Installs UpdateFirmware and GetDiagnostics on session; app is the charger (app.updater, app.diag: the
    running engines or None)."""
    session.handle("UpdateFirmware", _UPDATE, lambda p: _update(app, p))
    session.handle("GetDiagnostics", _DIAG, lambda p: _diagnostics(app, p))
    session.on_accepted = lambda: _accepted(app)


def _accepted(app):
    # BootNotification accepted (a boot or a reconnect): Core's work, then the engines' (a trial is confirmed,
    # owed statuses go again). Installed while this module is loaded; unload() gives Core its hook back.
    app.core.accepted()
    for engine in (app.updater, app.diag):
        if engine is not None:
            engine.accepted()


def _update(app, p):
    start_updater(app)
    try:
        app.updater.request(p["location"], p["retrieveDate"], p.get("retries"), p.get("retryInterval"))
    except ValueError as e:
        raise rpc.CallError(rpc.PROPERTY, str(e))
    return {}


def _diagnostics(app, p):
    from firmware.diag import ring as _ring

    ring = app.ring or _ring.start(app)  # the first GetDiagnostics starts the log ring (at every boot after it)
    ring.secrets = _ring.secrets(app.cfg)  # as set now: the upload masks them again in every line
    if app.diag is None:
        from firmware.diag import upload

        app.diag = upload.Diagnostics(ring, lambda s: _notify(app, "DiagnosticsStatusNotification", s),
                                      lambda: _snapshot(app), _transfer_lock(), _cas(app),
                                      app.cfg.get("ChargeBoxId"))
        fresh = True
    else:
        fresh = False
    try:
        name = app.diag.request(p["location"], p.get("startTime"), p.get("stopTime"), p.get("retries"),
                                p.get("retryInterval"))
    except ValueError as e:
        if fresh:
            _diag_done(app)
            _unload(app)
        raise rpc.CallError(rpc.PROPERTY, str(e))
    if fresh:
        app.diag.accepted()
        asyncio.create_task(_run_diag(app, app.diag))
    return {"fileName": name}


def start_updater(app):
    """The update engine and its task, unless they run already (at boot when firmware.ota.owed(), or at an
    UpdateFirmware)."""
    if app.updater is not None:
        return
    from firmware.ota import update

    app.updater = u = update.Updater(app.board.state_dir, lambda s: _notify(app, "FirmwareStatusNotification", s),
                                     lambda: _busy(app), lambda: _reboot(app), _transfer_lock(), _cas(app),
                                     lambda on: _hold(app, on))
    if app.session.registered and app.session.online:
        u.accepted()
    asyncio.create_task(_run_updater(app, u))


async def _run_updater(app, u):
    try:
        await u.run()  # returns when nothing is left to do or to report
    finally:
        if app.updater is u:
            app.updater = None
        _hold(app, False)
        from firmware.ota import update

        update.unload()
        _unload(app)


async def _run_diag(app, d):
    try:
        await d.run()
    finally:
        if app.diag is d:
            _diag_done(app)
        _unload(app)


def _diag_done(app):
    app.diag = None
    from firmware.diag import upload

    upload.unload()


def _unload(app):
    # Both engines idle: this module leaves the heap too, and the next request loads it again.
    global _lock
    if app.updater is not None or app.diag is not None:
        return
    _lock = None
    session = app.session
    for a in ACTIONS:
        session.handlers.pop(a, None)
    session.lazy(ACTIONS, app.load_fwmgmt)
    session.on_accepted = app.core.accepted
    from firmware import unload

    unload(__name__)


def _transfer_lock():
    global _lock
    if _lock is None:
        _lock = asyncio.Lock()
    return _lock


def _cas(app):
    cfg = app.cfg
    return cfg.get("TransferCa"), cfg.get("CentralSystemCa")


async def _notify(app, action, status):
    # True when the Central System has it (a CALLERROR too: it heard, and sending again will not help); False
    # when it could not be sent (offline, not yet registered, no answer): a final status goes again later.
    session = app.session
    if not session.registered:
        return False
    try:
        await session.call(action, {"status": status})
        return True
    except rpc.CallError:
        return True
    except Exception as e:
        log.warn(_TAG, "%s %s not sent: %r" % (action, status, e))
        return False


def _busy(app):
    # A transaction runs, is being started or is being stopped: the installation and the reboot wait. While the
    # update holds, an idle connector turns Unavailable here, so no session starts under the installation.
    c = app.connector
    busy = c.tx is not None or c.pending_tag is not None or c.stopping is not None
    if not busy and _held and app.evse.operative:
        log.info(_TAG, "connector Unavailable while the new firmware is installed")
        app.evse.operative = False  # not stored: the reboot or hold(False) gives the stored availability back
        app.core.kick_status0()
        c.tick()
    return busy


def _hold(app, on):
    # OCPP 1.6 §5.18: the connector becomes Unavailable for the installation once idle (never stopping a session)
    global _held
    _held = on
    if on:
        _busy(app)
    elif not app.evse.operative:
        from firmware import store

        avail = store.read_json(app.core._avail_path, None) or {}
        if avail.get("operative", True):
            app.evse.operative = True
            app.core.kick_status0()
            app.connector.tick()


async def _reboot(app):
    # The Central System is to see the connectors Unavailable before the link drops (§5.18): a reboot straight after
    # the hold lost connector 1's StatusNotification once. Bounded: offline, nothing goes out anyway.
    session = app.session
    reporter = app.connector.reporter
    for _ in range(30):
        if not (session.online and session.registered):
            break
        if reporter.status == reporter.reported and not app.core._status0_running:
            break
        await asyncio.sleep_ms(100)
    log.info(_TAG, "rebooting into the new firmware")
    if app.ring:
        app.ring.flush()
    await app.core.session_restart()
    app.board.reset()


def _snapshot(app):
    from firmware.diag import upload

    slot = "root"
    for p in sys.path:
        i = p.rfind("/slots/")
        if i >= 0:
            slot = p[i + 7:]
            break
    c = app.connector
    ev = app.evse
    return {"version": app.session.boot_fields["firmwareVersion"], "slot": slot,
            "uptime_s": app.board.ticks_ms() // 1000, "reset_cause": app.board.reset_cause(),
            "heap_free": _free(), "heap_largest_block": upload.largest_block(),
            "link": "online" if app.session.online else "offline", "registered": app.session.registered,
            "wifi": getattr(app.wifi, "state", None), "queue": len(app.txq), "connector": c.reporter.status,
            "transaction": c.transaction_id(), "fault": ev.fault, "ring_errors": app.ring and app.ring.errors}


def _free():
    import gc

    gc.collect()
    return gc.mem_free()
