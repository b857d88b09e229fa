# The FirmwareManagement wiring (firmware/ocpp/fwmgmt.py) on the unix port, through session.dispatch with a
# stand-in charger: the profile loads at its first CALL, a location no client can use is a
# PropertyConstraintViolation, the install hold turns only an idle connector Unavailable (not stored), and the
# module leaves the heap once both engines are idle. The engines themselves run against real servers in
# tests/integration/test_fw_management.py.
import sys
import tinytest
from firmware import store
from firmware.config import Config
from firmware.diag.ring import Ring
from firmware.ocpp import rpc
from firmware.ocpp.session import Session


class _Reporter:
    status = "Available"


class _Connector:
    def __init__(self):
        self.tx = None
        self.pending_tag = None
        self.stopping = None
        self.reporter = _Reporter()
        self.ticks = 0

    def tick(self):
        self.ticks += 1

    def transaction_id(self):
        return None


class _Evse:
    operative = True
    fault = None


class _Board:
    def __init__(self, state):
        self.state_dir = state

    def ticks_ms(self):
        return 0

    def reset_cause(self):
        return "power"


_SESSION = []  # one for all tests: its 6 KB frame buffer each time would not fit the test's heap


class _Core:
    # what fwmgmt asks of Core (firmware/ocpp/core.py): connector 0's status, the stored availability, the hook
    def __init__(self, app, state):
        self.app = app
        self._avail_path = state + "/availability.json"

    def kick_status0(self):
        self.app.status0 += 1

    def accepted(self):
        pass


class _App:
    def __init__(self):
        state = tinytest.tempdir("fwmgmt")
        self.board = _Board(state)
        self.cfg = Config(state)
        if not _SESSION:
            _SESSION.append(Session(self.cfg, {"firmwareVersion": "0.1.0"}))
        self.session = _SESSION[0]
        self.session.cfg = self.cfg
        self.session.handlers.clear()
        self.session._lazy.clear()
        self.ring = Ring(state)
        self.connector = _Connector()
        self.evse = _Evse()
        self.updater = self.diag = None
        self.status0 = 0
        self.core = _Core(self, state)
        self.session.on_accepted = self.core.accepted
        self.session.lazy(("UpdateFirmware", "GetDiagnostics"), self.load_fwmgmt)

    def load_fwmgmt(self):
        from firmware.ocpp import fwmgmt
        fwmgmt.register(self.session, self)
        return fwmgmt



async def test_loaded_at_the_first_call_and_a_bad_location_is_a_property_violation():
    app = _App()
    assert "firmware.ocpp.fwmgmt" not in sys.modules
    for action, extra in (("UpdateFirmware", ',"retrieveDate":"2026-01-01T00:00:00Z"'), ("GetDiagnostics", "")):
        reply, after = await app.session.dispatch('[2,"u1","%s",{"location":"gopher://example.org/x"%s}]' % (
            action, extra))
        assert reply[:3] == [4, "u1", rpc.PROPERTY] and "http" in reply[3], reply
        assert app.diag is None
    assert "firmware.ocpp.fwmgmt" in sys.modules
    reply, _ = await app.session.dispatch('[2,"u2","UpdateFirmware",{"retrieveDate":"2026-01-01T00:00:00Z"}]')
    assert reply[:3] == [4, "u2", rpc.OCCURENCE], reply


def test_the_hold_turns_only_an_idle_connector_unavailable_and_is_not_stored():
    app = _App()
    fw = app.load_fwmgmt()
    conn = app.connector
    conn.tx = object()  # a session runs
    fw._hold(app, True)
    assert app.evse.operative and fw._busy(app) and app.status0 == 0  # never touched while it runs
    conn.tx = None
    conn.stopping = object()  # StopTransaction still on its way
    assert fw._busy(app) and app.evse.operative
    conn.stopping = None
    assert not fw._busy(app)
    assert not app.evse.operative and app.status0 == 1 and conn.ticks == 1  # Unavailable at once, and said
    assert not store.present(app.board.state_dir + "/availability.json")  # not stored: the reboot gives it back
    fw._hold(app, False)  # the installation failed
    assert app.evse.operative and app.status0 == 2
    store.write_json(app.board.state_dir + "/availability.json", {"operative": False})
    fw._hold(app, True)
    app.evse.operative = False
    fw._hold(app, False)
    assert not app.evse.operative  # Inoperative as the Central System set it stays so


def test_the_module_leaves_the_heap_once_both_engines_are_idle():
    app = _App()
    fw = app.load_fwmgmt()
    assert "UpdateFirmware" in app.session.handlers and "GetDiagnostics" in app.session.handlers
    app.diag = object()
    fw._unload(app)
    assert "firmware.ocpp.fwmgmt" in sys.modules  # an engine still runs
    app.diag = None
    fw._unload(app)
    assert "firmware.ocpp.fwmgmt" not in sys.modules
    assert "UpdateFirmware" not in app.session.handlers and "GetDiagnostics" not in app.session.handlers
    ocpp = sys.modules["firmware.ocpp"]
    assert "fwmgmt" not in ocpp.__dict__
    assert app.session.on_accepted == app.core.accepted  # Core's hook back
    loader, _ = app.session._lazy["GetDiagnostics"]  # the lazy loader is back
    loader()
    assert "GetDiagnostics" in app.session.handlers  # loaded again
    assert "firmware.ocpp.fwmgmt" in sys.modules


tinytest.run(globals())
