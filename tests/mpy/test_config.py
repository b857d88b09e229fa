# firmware.config on the MicroPython unix port: key table, ChangeConfiguration rules, persistence, provisioning.
import os
import json
import gc
import tinytest
from firmware import store
from firmware import config
from firmware import config_keys as K
from firmware.config import Config, ACCEPTED, REJECTED, REBOOT_REQUIRED, NOT_SUPPORTED


_made = tinytest.made
_rmtree = tinytest.rmtree


def _fresh():
    return tinytest.tempdir("config")


def _provision(d, obj):
    with open(d + "/provision.json", "w") as f:
        f.write(json.dumps(obj))


def _items(cfg):
    return {k: (ro, v) for k, ro, v in cfg.ocpp_items()}


def test_defaults_follow_reference_charger():
    d = _fresh()
    c = Config(d)
    assert c.get("HeartbeatInterval") == 120
    assert c.get("MeterValueSampleInterval") == 30
    assert c.get("LocalAuthorizeOffline") is True and c.get("LocalPreAuthorize") is False
    assert c.get("AllowOfflineTxForUnknownId") is False and c.get("AuthorizeRemoteTxRequests") is False
    assert c.get("LocalAuthListEnabled") is True
    assert c.get("LocalAuthListMaxLength") == 16 and c.get("SendLocalListMaxLength") == 8
    assert c.get("ChargingScheduleMaxPeriods") == 3 and c.get("NumberOfConnectors") == 1
    assert c.get("ChargeProfileMaxStackLevel") == K.STACK_LEVEL_MAX
    assert c.get("MaxChargingProfilesInstalled") == K.PROFILES_MAX
    assert c.get("ConnectionTimeOut") == 120 and c.get("ResetRetries") == 0
    assert c.get("StopTransactionOnInvalidId") is True
    assert c.get("ReserveConnectorZeroSupported") is True
    assert c.get_list("ChargingScheduleAllowedChargingRateUnit") == ["Current", "Power"]
    assert c.get_list("MeterValuesSampledData") == [
        "Energy.Active.Import.Register", "Power.Active.Import", "Current.Import", "Voltage", "Current.Offered"]
    assert sorted(c.get_list("SupportedFeatureProfiles")) == sorted(
        ["Core", "FirmwareManagement", "LocalAuthListManagement", "Reservation", "SmartCharging", "RemoteTrigger"])
    assert c.get("MaxCurrent") == 32 and c.get("Variant") == "socket" and c.get("MeterModel") == "SDM630"
    assert c.get("ResponseTimeout") == 30 and c.get("SendBootOnReconnect") is False
    assert c.password_bytes() is None
    _rmtree(d)


def test_visible_keys_and_readonly_flags():
    d = _fresh()
    c = Config(d)
    items = _items(c)
    assert c.get("GetConfigurationMaxKeys") >= len(items)
    assert items["HeartbeatInterval"] == (False, "120")
    assert items["NumberOfConnectors"] == (True, "1")
    assert items["LocalAuthorizeOffline"] == (False, "true")
    assert items["MeterValuesSampledDataMaxLength"][0] is True
    for device in ("CentralSystemUrl", "ChargeBoxId", "Password", "CentralSystemCa", "MeterModel", "MaxCurrent",
                   "Pins", "AuthorizationKey"):
        assert device not in items, device
    for e in K.KEYS:  # every CSL key with a MaxLength companion agrees with its own bound
        if e[1] & K.TYPE == K.CSL and (e[0] + "MaxLength") in items:
            assert int(items[e[0] + "MaxLength"][1]) == e[4]
            assert len(c.get_list(e[0])) <= e[4]
    _rmtree(d)


def test_keys_are_case_insensitive():
    d = _fresh()
    c = Config(d)
    assert c.get("heartbeatinterval") == 120
    assert c.set("HEARTBEATINTERVAL", "300") == (ACCEPTED, None)
    assert c.get("HeartbeatInterval") == 300
    found, unknown = c.ocpp_items(["heartbeatINTERVAL", "NoSuchKey", "numberofconnectors"])
    assert found == [("HeartbeatInterval", False, "300"), ("NumberOfConnectors", True, "1")]
    assert unknown == ["NoSuchKey"]
    tinytest.raises(KeyError, c.get, "NoSuchKey")
    _rmtree(d)


def test_set_status_paths_with_reasons():
    d = _fresh()
    c = Config(d)
    st, why = c.set("NumberOfConnectors", "2")
    assert st == REJECTED and "read-only" in why
    st, why = c.set("FooBar", "1")
    assert st == NOT_SUPPORTED and "FooBar" in why
    assert c.set("ChargeBoxId", "x")[0] == NOT_SUPPORTED  # device settings are not OCPP keys
    for bad in ("12a", "", " 12", "1_0", "0x10", "1.5"):
        st, why = c.set("HeartbeatInterval", bad)
        assert st == REJECTED and "integer" in why, bad
    st, why = c.set("MeterValueSampleInterval", "65535")
    assert st == REJECTED and "65534" in why
    st, why = c.set("WebSocketPingInterval", "-1")
    assert st == REJECTED and "minimum 0" in why
    st, why = c.set("LocalPreAuthorize", "yes")
    assert st == REJECTED and "true or false" in why
    assert c.set("LocalPreAuthorize", "TRUE") == (ACCEPTED, None) and c.get("LocalPreAuthorize") is True
    assert c.set("LocalPreAuthorize", "False") == (ACCEPTED, None) and c.get("LocalPreAuthorize") is False
    assert c.get("HeartbeatInterval") == 120  # rejected values changed nothing
    _rmtree(d)


def test_reboot_required_status():
    d = _fresh()
    c = Config(d)
    assert c.set_device("MeterModel", "SDM120") == (REBOOT_REQUIRED, None)
    assert c.get("MeterModel") == "SDM120"
    table = (("Slow", K.INT | K.RW | K.REBOOT, 1, 0, 9, 0), ("Fast", K.INT | K.RW, 1, 0, 9, 0))
    c2 = Config(d, table)
    assert c2.set("slow", "5") == (REBOOT_REQUIRED, None) and c2.get("Slow") == 5
    assert c2.set("Fast", "5") == (ACCEPTED, None)
    _rmtree(d)


def test_clamps_store_given_value_use_effective():
    d = _fresh()
    c = Config(d)
    assert c.set("HeartbeatInterval", "5")[0] == ACCEPTED
    assert c.get("HeartbeatInterval") == 10 and _items(c)["HeartbeatInterval"][1] == "5"
    assert c.set("HeartbeatInterval", "0")[0] == ACCEPTED and c.get("HeartbeatInterval") == 10
    assert c.set("HeartbeatInterval", "11")[0] == ACCEPTED and c.get("HeartbeatInterval") == 11
    assert c.set("MeterValueSampleInterval", "2")[0] == ACCEPTED and c.get("MeterValueSampleInterval") == 4
    assert c.set("MeterValueSampleInterval", "0")[0] == ACCEPTED and c.get("MeterValueSampleInterval") == 0
    assert c.set("MeterValueSampleInterval", "65534")[0] == ACCEPTED
    assert c.get("MeterValueSampleInterval") == 65534
    _rmtree(d)


def test_csl_validation():
    d = _fresh()
    c = Config(d)
    key = "MeterValuesSampledData"
    st, why = c.set(key, "Energy.Active.Import.Register,SoC")
    assert st == REJECTED and "measurand" in why and "SoC" in why
    assert c.get_list(key)[0] == "Energy.Active.Import.Register" and len(c.get_list(key)) == 5
    st, why = c.set(key, ",".join(["Voltage"] * (K.MEASURANDS_MAX + 1)))
    assert st == REJECTED and str(K.MEASURANDS_MAX) in why and "MaxLength" in why
    assert c.set(key, "Voltage.L1, Current.Import.L3,Energy.Active.Import.Register")[0] == ACCEPTED
    assert c.get(key) == "Voltage.L1,Current.Import.L3,Energy.Active.Import.Register"
    assert c.set(key, "Energy.Active.Import.Register.L1")[0] == REJECTED
    assert c.set(key, "Voltage.L4")[0] == REJECTED
    assert c.set("StopTxnSampledData", "")[0] == ACCEPTED and c.get_list("StopTxnSampledData") == []
    assert c.set("ConnectorPhaseRotation", "0.RST,1.RTS")[0] == ACCEPTED
    assert c.set("ConnectorPhaseRotation", "2.RST")[0] == REJECTED
    assert c.set("ConnectorPhaseRotation", "1.XYZ")[0] == REJECTED
    assert c.set("SupportedFeatureProfiles", "Core")[0] == REJECTED
    _rmtree(d)


def test_authorization_key_hex_and_plaintext_never_shown():
    d = _fresh()
    c = Config(d)
    seen = []
    c.watch(seen.append)
    key = "00112233445566778899aabbccddeeff01234567"
    assert c.set("AuthorizationKey", key) == (ACCEPTED, None)
    assert c.password_bytes() == bytes(range(0, 256, 17)) + b"\x01\x23\x45\x67"
    assert seen == ["AuthorizationKey"]
    assert c.set("authorizationkey", "plain-text-key-16") == (ACCEPTED, None)
    assert c.password_bytes() == b"plain-text-key-16"
    for bad in ("0011223344556677889900aabbccddeeff0", "short", "x" * 21, "g" * 32):
        st, why = c.set("AuthorizationKey", bad)
        assert st == REJECTED and "AuthorizationKey" in why, bad
    assert c.password_bytes() == b"plain-text-key-16"
    assert c.set("AuthorizationKey", "hex:0123456789ab")[0] == ACCEPTED  # plaintext that looks like hex:
    assert c.password_bytes() == b"hex:0123456789ab"
    for k, ro, v in c.ocpp_items():
        assert k != "AuthorizationKey" and "plain-text" not in v
    assert c.ocpp_items(["AuthorizationKey"]) == ([], [])
    c.set("AuthorizationKey", key.upper())
    assert Config(d).password_bytes() == bytes(range(0, 256, 17)) + b"\x01\x23\x45\x67"
    _rmtree(d)


def test_persistence_only_changed_values():
    d = _fresh()
    c = Config(d)
    assert c.set("HeartbeatInterval", "300")[0] == ACCEPTED
    assert c.set("MeterValuesSampledData", "Voltage")[0] == ACCEPTED
    assert c.set("LocalAuthorizeOffline", "false")[0] == ACCEPTED
    assert c.set_device("MaxCurrent", 16)[0] == ACCEPTED
    c2 = Config(d)
    assert c2.get("HeartbeatInterval") == 300 and c2.get("MeterValuesSampledData") == "Voltage"
    assert c2.get("LocalAuthorizeOffline") is False and c2.get("MaxCurrent") == 16
    saved = store.read_json(d + "/config.json")
    assert sorted(saved) == ["HeartbeatInterval", "LocalAuthorizeOffline", "MaxCurrent", "MeterValuesSampledData"]
    c2.set("HeartbeatInterval", "120")  # back to the default: no longer stored
    assert "HeartbeatInterval" not in store.read_json(d + "/config.json")
    before = store.bytes_written
    assert c2.set("MaxCurrent", "16")[0] == NOT_SUPPORTED
    assert c2.set_device("MaxCurrent", "16") == (ACCEPTED, None)  # unchanged: no flash write
    assert store.bytes_written == before
    _rmtree(d)


def test_watch_called_after_change_only():
    d = _fresh()
    c = Config(d)
    seen = []

    def fn(name):
        seen.append((name, c.get(name)))
    c.watch(fn)
    c.set("heartbeatinterval", "60")
    c.set("HeartbeatInterval", "60")
    c.set("HeartbeatInterval", "x")
    c.set("NumberOfConnectors", "3")
    assert seen == [("HeartbeatInterval", 60)]
    _rmtree(d)


def test_device_settings_validated():
    d = _fresh()
    c = Config(d)
    assert c.set_device("MaxCurrent", 5)[0] == REJECTED
    st, why = c.set_device("MaxCurrent", 81)
    assert st == REJECTED and "80" in why
    assert c.set_device("MaxCurrent", "abc")[0] == REJECTED
    assert c.set_device("MaxCurrent", True)[0] == REJECTED
    assert c.set_device("Variant", "cable") == (REBOOT_REQUIRED, None) and c.get("Variant") == "cable"
    st, why = c.set_device("MeterModel", "XYZ")
    assert st == REJECTED and "SDM630" in why
    assert c.set_device("CentralSystemUrl", "http://x")[0] == REJECTED
    assert c.set_device("CentralSystemUrl", "wss://cs.example:443/ocpp")[0] == ACCEPTED
    assert c.set_device("ChargeBoxId", "CP 1")[0] == REJECTED
    assert c.set_device("Pins", "{bad")[0] == REJECTED
    assert c.set_device("Pins", '{"cp_pwm": 4}')[0] == REBOOT_REQUIRED
    assert c.set_device("HeartbeatInterval", 5)[0] == NOT_SUPPORTED
    assert c.set_device("Password", "0011223344556677889900aabbccddeeff001122") == (ACCEPTED, None)
    assert len(c.password_bytes()) == 20
    _rmtree(d)


def test_provision_applied_once_and_reported():
    d = _fresh()
    prov = {"CentralSystemUrl": "ws://127.0.0.1:9000/ocpp", "ChargeBoxId": "CP1", "Password": "installer-pass",
            "MeterModel": "ABB_B23", "MeterUnit": 2, "Variant": "cable", "MaxCurrent": 99,
            "HeartbeatInterval": 30, "Bogus": 1}
    _provision(d, prov)
    c = Config(d)
    assert c.get("CentralSystemUrl") == "ws://127.0.0.1:9000/ocpp" and c.get("ChargeBoxId") == "CP1"
    assert c.get("MeterModel") == "ABB_B23" and c.get("MeterUnit") == 2 and c.get("Variant") == "cable"
    assert c.password_bytes() == b"installer-pass"
    assert c.get("MaxCurrent") == 32 and c.get("HeartbeatInterval") == 120
    report = " ".join(c.provision_report)
    assert "MaxCurrent" in report and "HeartbeatInterval" in report and "Bogus" in report
    assert len(c.provision_report) == 3
    # The Central System rotates the key; the same provision.json at the next power-on must not undo it.
    assert c.set("AuthorizationKey", "new-key-from-csms")[0] == ACCEPTED
    c = Config(d)
    assert c.password_bytes() == b"new-key-from-csms" and c.provision_report == []
    prov["MaxCurrent"] = 20
    _provision(d, prov)  # the installer changed a setting: applied again
    c = Config(d)
    assert c.get("MaxCurrent") == 20 and c.password_bytes() == b"installer-pass"
    _rmtree(d)


def test_bad_provision_is_not_fatal():
    d = _fresh()
    with open(d + "/provision.json", "w") as f:
        f.write("{not json")
    c = Config(d)
    assert c.get("MaxCurrent") == 32 and len(c.provision_report) == 1
    _rmtree(d)


def _garble(p):
    with open(p, "r+b") as f:
        f.seek(12)
        f.write(b"#")


def test_corrupt_config_recovered_from_its_copy():
    d = _fresh()
    c = Config(d)
    c.set("HeartbeatInterval", "300")
    _garble(d + "/config.json")
    del store.notes[:]
    c = Config(d)
    assert c.get("HeartbeatInterval") == 300
    assert store.exists(d + "/config.json.bad")  # the evidence
    assert store.notes == ["config.json CRC mismatch: restored from config.json.bak"]
    assert c.set("HeartbeatInterval", "400")[0] == ACCEPTED
    assert Config(d).get("HeartbeatInterval") == 400
    _rmtree(d)


def test_config_and_its_copy_corrupt_fall_back_to_defaults_and_say_so():
    d = _fresh()
    c = Config(d)
    c.set("HeartbeatInterval", "300")
    _garble(d + "/config.json")
    _garble(d + "/config.json.bak")
    del store.notes[:]
    c = Config(d)
    assert c.get("HeartbeatInterval") == 120
    assert store.notes == ["config.json CRC mismatch, copy CRC mismatch: lost, defaults used"]
    _rmtree(d)


def test_rotated_key_and_url_survive_a_corrupt_config_file():
    # Issue 9 item 7: the key the Central System set must not fall back to provision.json's, and the URL
    # must stay when provision.json is gone too.
    for mode in ("half", "garbage", "zero", "deleted"):
        d = _fresh()
        _provision(d, {"CentralSystemUrl": "ws://cs.example/ocpp", "ChargeBoxId": "CP9", "Password": "factory-pw"})
        c = Config(d)
        assert c.set("AuthorizationKey", "rotated-key-0001")[0] == ACCEPTED
        assert c.set("ConnectionTimeOut", "77")[0] == ACCEPTED
        raw = store.read(d + "/config.json")
        with open(d + "/config.json", "wb") as f:
            f.write({"half": raw[:len(raw) // 2], "garbage": b"\xa5" * len(raw), "zero": b""}.get(mode, b""))
        if mode == "deleted":
            os.remove(d + "/config.json")
        c = Config(d)
        assert c.password_bytes() == b"rotated-key-0001", mode
        assert c.get("ConnectionTimeOut") == 77 and c.get("CentralSystemUrl") == "ws://cs.example/ocpp", mode
        os.remove(d + "/provision.json")
        _garble(d + "/config.json")
        c = Config(d)
        assert c.get("CentralSystemUrl") == "ws://cs.example/ocpp" and c.get("ChargeBoxId") == "CP9", mode
        assert c.password_bytes() == b"rotated-key-0001", mode
        _rmtree(d)


def test_persisted_value_out_of_new_bounds_ignored():
    d = _fresh()
    store.write_json(d + "/config.json", {"MeterValueSampleInterval": 99999, "OldKey": 1, "HeartbeatInterval": 50})
    c = Config(d)
    assert c.get("MeterValueSampleInterval") == 30 and c.get("HeartbeatInterval") == 50
    _rmtree(d)


def test_ram_footprint():
    d = _fresh()
    gc.collect()
    before = gc.mem_alloc()
    c = Config(d)
    c.set("HeartbeatInterval", "300")
    c.get("heartbeatinterval")
    gc.collect()
    used = gc.mem_alloc() - before
    assert used < 4096, used  # a Config must stay a small part of the 110 KB heap
    _rmtree(d)


def test_compact_table_agrees_with_named_constants():
    d = _fresh()
    c = Config(d)
    assert c.get("LocalAuthListMaxLength") == K.LOCAL_LIST_MAX
    assert c.get("SendLocalListMaxLength") == K.SEND_LOCAL_LIST_MAX
    assert c.get("ChargingScheduleMaxPeriods") == K.SCHEDULE_MAX_PERIODS
    assert c.get("NumberOfConnectors") == K.NUMBER_OF_CONNECTORS
    assert c.get("ConnectorPhaseRotationMaxLength") == K.NUMBER_OF_CONNECTORS + 1
    assert c.get("GetConfigurationMaxKeys") == K.GET_CONFIG_MAX_KEYS
    advertised = c.get("SupportedFeatureProfiles").split(",")
    assert sorted(advertised) == sorted(K.PROFILES)  # every 1.6 profile, FirmwareManagement since issue 11
    assert c.get("SupportedFeatureProfilesMaxLength") == len(K.PROFILES)
    keys = K.KEYS
    names = [e[0] for e in keys]
    assert len(names) == len(set(names))
    for e in keys:
        assert K.entry(K.find(e[0])) == e and K.find(e[0].upper()) == K.find(e[0])
        t = e[1] & K.TYPE
        assert type(e[2]) is (int, bool, str, str)[t] or e[2] is None and e[1] & K.SECRET, e
        if e[1] & K.PHASE:
            assert e[5] == K.MEASURANDS
    assert K.PHASES == ("L1", "L2", "L3") and "Voltage" in K.PHASED and K.VARIANTS == ("socket", "cable")
    assert K.find("HeartbeatInterval Irw") == -1 and K.find("") == -1 and K.find("Heartbeat") == -1
    _rmtree(d)


def test_getconfiguration_walk_matches_the_decoded_table():
    d = _fresh()
    c = Config(d)
    t = Config(d, K.KEYS)  # the same table as tuples: the generic path
    assert list(c.ocpp_items()) == list(t.ocpp_items())
    for k, v in (("HeartbeatInterval", "300"), ("LocalPreAuthorize", "true"), ("StopTxnSampledData", "Voltage")):
        assert c.set(k, v)[0] == ACCEPTED
    assert list(c.ocpp_items()) == list(Config(d, K.KEYS).ocpp_items())
    _rmtree(d)


def test_get_cache_follows_changes():
    d = _fresh()
    c = Config(d)
    assert c.get("HeartbeatInterval") == 120 and c.get("heartbeatINTERVAL") == 120
    assert c.set("HeartbeatInterval", "300")[0] == ACCEPTED
    assert c.get("HeartbeatInterval") == 300 and c.get("heartbeatINTERVAL") == 300
    assert c.set_device("MaxCurrent", 16)[0] == ACCEPTED and c.get("MaxCurrent") == 16
    assert c.get("AuthorizationKey") is None
    _rmtree(d)


def test_zz_cleanup():  # sorted last
    for d in _made:
        _rmtree(d)
    for d in _made:
        assert not store.exists(d)


tinytest.run(globals())
