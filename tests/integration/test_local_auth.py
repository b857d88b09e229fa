"""LocalAuthListManagement end to end (OCTT TC_042_2, TC_043 family, TC_008_1, TC_061): the firmware on the
virtual board answers GetLocalListVersion / SendLocalList / ClearCache from the demo Central System, keeps the
list across a power cut and uses it to authorise a tag without asking the Central System."""

CP = "CP1"
SEND_MAX = 8    # SendLocalListMaxLength (firmware/config_keys.py)
LIST_MAX = 16   # LocalAuthListMaxLength


def _booted(csms_factory, sim_factory, **csms_kwargs):
    csms = csms_factory(**csms_kwargs)
    sim = sim_factory(csms.url)
    csms.wait_for("StatusNotification", cp=CP, where=lambda p: p["connectorId"] == 1)
    return csms, sim


def _entries(prefix, n, status="Accepted"):
    return [{"idTag": "%s%02d" % (prefix, i), "idTagInfo": {"status": status}} for i in range(n)]


def _send(csms, version, kind, entries):
    return csms.call(CP, "SendLocalList", {"listVersion": version, "updateType": kind,
                                           "localAuthorizationList": entries})["status"]


def _version(csms):
    return csms.call(CP, "GetLocalListVersion", {})["listVersion"]


def _call_error(csms, action, payload):
    """The CALLERROR code the charger answers with (the payload bypasses the Central System's schemas)."""
    reply = csms.control({"cmd": "call", "cp": CP, "action": action, "payload": payload, "timeout": 10,
                          "validate": False})
    assert not reply["ok"] and reply["reply"][0] == 4, reply
    return reply["reply"][2]


def test_list_versions_and_statuses(csms_factory, sim_factory):
    csms, sim = _booted(csms_factory, sim_factory)
    assert _version(csms) == 0  # TC_042_2: an empty list is version 0

    assert _send(csms, 1, "Full", _entries("A", SEND_MAX)) == "Accepted"  # TC_043: Full
    assert _version(csms) == 1
    diff = _entries("B", 2) + [{"idTag": "A00"}]  # add two, remove one
    assert _send(csms, 2, "Differential", diff) == "Accepted"
    assert _version(csms) == 2

    assert _send(csms, 2, "Differential", _entries("C", 1)) == "VersionMismatch"  # TC_043_2
    assert _send(csms, 1, "Differential", _entries("C", 1)) == "VersionMismatch"
    assert _version(csms) == 2

    assert _send(csms, 3, "Full", _entries("D", SEND_MAX + 1)) == "Failed"  # TC_043_3: over SendLocalListMaxLength
    assert _version(csms) == 2

    # 9 ids now; 8 more make 17 > LocalAuthListMaxLength: refused whole, the version stays
    assert _send(csms, 3, "Differential", _entries("E", SEND_MAX)) == "Failed"
    assert _version(csms) == 2
    # 7 more make 16 exactly: accepted
    assert _send(csms, 3, "Differential", _entries("E", LIST_MAX - 9)) == "Accepted"
    assert _version(csms) == 3
    assert _send(csms, 4, "Differential", _entries("F", 1)) == "Failed"
    assert _version(csms) == 3

    assert _send(csms, 9, "Full", []) == "Accepted"  # digest §7 Q5: empty means version 0
    assert _version(csms) == 0


def test_malformed_entries_get_callerrors_and_change_nothing(csms_factory, sim_factory):
    csms, sim = _booted(csms_factory, sim_factory)
    assert _send(csms, 1, "Full", _entries("A", 2)) == "Accepted"
    long_tag = [{"idTag": "X" * 21, "idTagInfo": {"status": "Accepted"}}]
    assert _call_error(csms, "SendLocalList", {"listVersion": 2, "updateType": "Full",
                                               "localAuthorizationList": long_tag}) == "TypeConstraintViolation"
    bad_status = [{"idTag": "X", "idTagInfo": {"status": "Welcome"}}]
    assert _call_error(csms, "SendLocalList", {"listVersion": 2, "updateType": "Differential",
                                               "localAuthorizationList": bad_status}) == "PropertyConstraintViolation"
    no_info = [{"idTag": "X"}]
    assert _call_error(csms, "SendLocalList", {"listVersion": 2, "updateType": "Full",
                                               "localAuthorizationList": no_info}) == "OccurenceConstraintViolation"
    assert _version(csms) == 1
    assert sim.status()["powered"]


def test_list_survives_power_cut_and_authorises_locally(csms_factory, sim_factory):
    csms, sim = _booted(csms_factory, sim_factory, tags=("TAG1", "LOCAL1"))
    entries = [{"idTag": "LOCAL1", "idTagInfo": {"status": "Accepted"}},
               {"idTag": "BLOCKED1", "idTagInfo": {"status": "Blocked"}}]
    assert _send(csms, 7, "Full", entries) == "Accepted"

    sim.cmd({"cmd": "power", "on": False})
    sim.cmd({"cmd": "power", "on": True})
    csms.wait_for("BootNotification", cp=CP, count=2, timeout=60)
    csms.wait_for("StatusNotification", cp=CP, count=2, where=lambda p: p["connectorId"] == 1)
    assert _version(csms) == 7

    # TC_008_1: with LocalPreAuthorize an id in the list starts at once, with no Authorize.req
    assert csms.call(CP, "ChangeConfiguration", {"key": "LocalPreAuthorize", "value": "true"}) == \
        {"status": "Accepted"}
    mark = len(csms.messages())
    sim.cmd({"cmd": "plug", "cable_a": 32})
    sim.cmd({"cmd": "ev", "state": "B", "max_a": 16})
    sim.cmd({"cmd": "tag", "id": "LOCAL1"})
    start = csms.wait_for("StartTransaction", cp=CP, since=mark)
    assert start["idTag"] == "LOCAL1"
    assert csms.calls("Authorize", cp=CP, since=mark) == []


def _session(csms, sim, tag):
    """Plug, swipe, wait for the start, swipe again to stop, unplug; returns the CALLs it caused."""
    mark = len(csms.messages())
    sim.cmd({"cmd": "plug", "cable_a": 32})
    sim.cmd({"cmd": "ev", "state": "B", "max_a": 16})
    sim.cmd({"cmd": "tag", "id": tag})
    csms.wait_for("StartTransaction", cp=CP, since=mark)
    sim.cmd({"cmd": "tag", "id": tag})
    csms.wait_for("StopTransaction", cp=CP, since=mark)
    sim.cmd({"cmd": "unplug"})
    csms.wait_for("StatusNotification", cp=CP, since=mark, where=lambda p: p["status"] == "Available")
    return [m["msg"][2] for m in csms.messages(CP)[mark:] if m["dir"] == "in" and m["msg"] and m["msg"][0] == 2]


def test_clear_cache_makes_the_charger_ask_again(csms_factory, sim_factory):
    # TC_061: a cached id starts without Authorize (LocalPreAuthorize); after ClearCache it is asked for again
    csms, sim = _booted(csms_factory, sim_factory, tags=("TAG1",))
    assert csms.call(CP, "ChangeConfiguration", {"key": "LocalPreAuthorize", "value": "true"}) == \
        {"status": "Accepted"}
    assert "Authorize" in _session(csms, sim, "TAG1")
    assert "Authorize" not in _session(csms, sim, "TAG1")  # from the cache
    assert csms.call(CP, "ClearCache", {}) == {"status": "Accepted"}
    assert "Authorize" in _session(csms, sim, "TAG1")

    assert csms.call(CP, "ChangeConfiguration", {"key": "AuthorizationCacheEnabled", "value": "false"}) == \
        {"status": "Accepted"}
    assert csms.call(CP, "ClearCache", {}) == {"status": "Rejected"}
    assert "Authorize" in _session(csms, sim, "TAG1")  # a disabled cache is not consulted
