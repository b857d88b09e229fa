"""Reference charge point on CPython, built on the `ocpp` package (v16), for `make bench` to compare against.

    .venv/bin/python tools/refcp.py --url ws://127.0.0.1:PORT/ocpp --id REFCP

It answers exactly the calls the benchmark times (TriggerMessage, GetConfiguration, SendLocalList,
SetChargingProfile, RemoteStartTransaction, RemoteStopTransaction) with the same decisions as the firmware, and
keeps real state in memory (a configuration table, a local list with its version, a profile store, a pending
remote start) so the work per call is comparable. The ocpp package validates every payload against the OCPP 1.6
JSON schemas, as the firmware validates against its compact specs. Prints "REFCP READY" once BootNotification is
accepted; exits when the connection closes or on SIGTERM.
"""
import argparse
import asyncio
import datetime
import signal
import sys

import websockets
from ocpp.routing import on
from ocpp.v16 import ChargePoint, call, call_result

LOCAL_LIST_MAX = 16
SEND_LOCAL_LIST_MAX = 8
PROFILES_MAX = 8
MAX_PERIODS = 3

# The same visible keys and defaults a charger of this kind reports, so GetConfiguration answers are alike.
CONFIG = {
    "AllowOfflineTxForUnknownId": "false", "AuthorizationCacheEnabled": "true", "AuthorizeRemoteTxRequests": "false",
    "BlinkRepeat": "3", "ClockAlignedDataInterval": "0", "ConnectionTimeOut": "120",
    "ConnectorPhaseRotation": "0.Unknown,1.Unknown", "ConnectorPhaseRotationMaxLength": "2",
    "GetConfigurationMaxKeys": "80", "HeartbeatInterval": "120", "LightIntensity": "100",
    "LocalAuthorizeOffline": "true", "LocalPreAuthorize": "false", "MaxEnergyOnInvalidId": "0",
    "MeterValuesAlignedData": "Energy.Active.Import.Register", "MeterValuesAlignedDataMaxLength": "8",
    "MeterValuesSampledData": "Energy.Active.Import.Register,Power.Active.Import,Current.Import,Voltage,"
                              "Current.Offered",
    "MeterValuesSampledDataMaxLength": "8", "MeterValueSampleInterval": "30", "MinimumStatusDuration": "0",
    "NumberOfConnectors": "1", "ResetRetries": "0", "StopTransactionOnEVSideDisconnect": "true",
    "StopTransactionOnInvalidId": "true", "StopTxnAlignedData": "", "StopTxnAlignedDataMaxLength": "8",
    "StopTxnSampledData": "", "StopTxnSampledDataMaxLength": "8",
    "SupportedFeatureProfiles": "Core,FirmwareManagement,LocalAuthListManagement,Reservation,SmartCharging,"
                                "RemoteTrigger",
    "SupportedFeatureProfilesMaxLength": "6", "TransactionMessageAttempts": "3",
    "TransactionMessageRetryInterval": "60", "UnlockConnectorOnEVSideDisconnect": "true",
    "WebSocketPingInterval": "60", "LocalAuthListEnabled": "true", "LocalAuthListMaxLength": "16",
    "SendLocalListMaxLength": "8", "ReserveConnectorZeroSupported": "true", "ChargeProfileMaxStackLevel": "8",
    "ChargingScheduleAllowedChargingRateUnit": "Current,Power", "ChargingScheduleMaxPeriods": "3",
    "ConnectorSwitch3to1PhaseSupported": "false", "MaxChargingProfilesInstalled": "8",
}
READONLY = {"ConnectorPhaseRotationMaxLength", "GetConfigurationMaxKeys", "MeterValuesAlignedDataMaxLength",
            "MeterValuesSampledDataMaxLength", "NumberOfConnectors", "StopTxnAlignedDataMaxLength",
            "StopTxnSampledDataMaxLength", "SupportedFeatureProfiles", "SupportedFeatureProfilesMaxLength",
            "LocalAuthListMaxLength", "SendLocalListMaxLength", "ReserveConnectorZeroSupported",
            "ChargeProfileMaxStackLevel", "ChargingScheduleAllowedChargingRateUnit", "ChargingScheduleMaxPeriods",
            "ConnectorSwitch3to1PhaseSupported", "MaxChargingProfilesInstalled"}


def now_iso():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class RefChargePoint(ChargePoint):
    def __init__(self, ident, conn):
        super().__init__(ident, conn)
        self.local_list = {}        # idTag (upper case) -> idTagInfo
        self.list_version = 0
        self.profiles = {}          # chargingProfileId -> (connectorId, profile)
        self.pending_tag = None
        self.transaction_id = None

    @on("TriggerMessage")
    async def on_trigger(self, requested_message, connector_id=None, **_):
        if requested_message == "Heartbeat":
            asyncio.ensure_future(self._heartbeat())  # the answer goes out first, as on the charger
            return call_result.TriggerMessage(status="Accepted")
        return call_result.TriggerMessage(status="NotImplemented")

    async def _heartbeat(self):
        await self.call(call.Heartbeat())

    @on("GetConfiguration")
    async def on_get_configuration(self, key=None, **_):
        wanted = {k.lower() for k in key} if key else None
        known, unknown = [], []
        for name, value in CONFIG.items():
            if wanted is None or name.lower() in wanted:
                known.append({"key": name, "readonly": name in READONLY, "value": value})
        if wanted:
            names = {n.lower() for n in CONFIG}
            unknown = [k for k in key if k.lower() not in names]
        result = {"configuration_key": known}
        if unknown:
            result["unknown_key"] = unknown
        return call_result.GetConfiguration(**result)

    @on("SendLocalList")
    async def on_send_local_list(self, list_version, update_type, local_authorization_list=None, **_):
        entries = local_authorization_list or []
        if len(entries) > SEND_LOCAL_LIST_MAX:
            return call_result.SendLocalList(status="Failed")
        tags = [e["id_tag"].upper() for e in entries]
        if len(set(tags)) != len(tags):
            return call_result.SendLocalList(status="Failed")
        if update_type == "Differential" and list_version <= self.list_version:
            return call_result.SendLocalList(status="VersionMismatch")
        new = {} if update_type == "Full" else dict(self.local_list)
        for tag, e in zip(tags, entries):
            if e.get("id_tag_info") is None:
                new.pop(tag, None)
            else:
                new[tag] = e["id_tag_info"]
        if len(new) > LOCAL_LIST_MAX:
            return call_result.SendLocalList(status="Failed")
        self.local_list = new
        self.list_version = list_version if new else 0
        return call_result.SendLocalList(status="Accepted")

    @on("SetChargingProfile")
    async def on_set_charging_profile(self, connector_id, cs_charging_profiles, **_):
        p = cs_charging_profiles
        if len(p["charging_schedule"]["charging_schedule_period"]) > MAX_PERIODS or p["stack_level"] > 8:
            return call_result.SetChargingProfile(status="Rejected")
        if p["charging_profile_purpose"] == "TxProfile" and self.transaction_id is None:
            return call_result.SetChargingProfile(status="Rejected")
        same = [pid for pid, (cid, q) in self.profiles.items()
                if pid == p["charging_profile_id"] or (cid == connector_id and q["stack_level"] == p["stack_level"]
                                                       and q["charging_profile_purpose"]
                                                       == p["charging_profile_purpose"])]
        for pid in same:
            del self.profiles[pid]
        if len(self.profiles) >= PROFILES_MAX:
            return call_result.SetChargingProfile(status="Rejected")
        self.profiles[p["charging_profile_id"]] = (connector_id, p)
        return call_result.SetChargingProfile(status="Accepted")

    @on("RemoteStartTransaction")
    async def on_remote_start(self, id_tag, connector_id=None, charging_profile=None, **_):
        if connector_id not in (None, 1) or self.transaction_id is not None or self.pending_tag is not None:
            return call_result.RemoteStartTransaction(status="Rejected")
        self.pending_tag = id_tag.upper()
        return call_result.RemoteStartTransaction(status="Accepted")

    @on("RemoteStopTransaction")
    async def on_remote_stop(self, transaction_id, **_):
        if self.transaction_id is None or transaction_id != self.transaction_id:
            return call_result.RemoteStopTransaction(status="Rejected")
        self.transaction_id = None
        return call_result.RemoteStopTransaction(status="Accepted")

    async def boot(self):
        conf = await self.call(call.BootNotification(charge_point_vendor="Reference", charge_point_model="ocpp-py"))
        return conf.status


async def amain(args):
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with websockets.connect(args.url.rstrip("/") + "/" + args.id, subprotocols=["ocpp1.6"],
                                  ping_interval=None, max_size=None) as ws:
        cp = RefChargePoint(args.id, ws)
        runner = asyncio.create_task(cp.start())
        status = await cp.boot()
        print("REFCP READY boot=%s" % status, flush=True)
        waiter = asyncio.create_task(stop.wait())
        await asyncio.wait({runner, waiter}, return_when=asyncio.FIRST_COMPLETED)
        runner.cancel()
        waiter.cancel()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--id", default="REFCP")
    args = p.parse_args()
    try:
        asyncio.run(amain(args))
    except (websockets.ConnectionClosed, OSError) as e:
        print("refcp: %s" % e, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
