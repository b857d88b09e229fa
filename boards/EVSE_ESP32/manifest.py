# Frozen into the EVSE_ESP32 image: the port's own modules, then the charger firmware from this repository, compiled
# at -O3 like tools/build.py does. The list is exactly what the firmware imports on an ESP32 (boot.py and main.py
# and everything they import, inside functions too, with sys.platform == "esp32"): tests/test_board_manifest.py
# walks the imports and fails, naming the modules, when this list and the code disagree. boot.py and main.py are
# not frozen: they stay on the file system as on a stock board (make deploy writes them), and run the frozen code.
include("$(PORT_DIR)/boards/manifest.py")

_REPO = "$(BOARD_DIR)/../.."

module("slotboot.py", base_path=_REPO, opt=3)
package(
    "firmware",
    files=(
        "__init__.py",
        "app.py",
        "chargepoint.py",
        "clock.py",
        "config.py",
        "config_keys.py",
        "console.py",
        "diag/__init__.py",
        "diag/ring.py",
        "diag/upload.py",
        "evse.py",
        "jsonbuf.py",
        "leds.py",
        "loadlimit.py",
        "log.py",
        "meter.py",
        "mqttfront.py",
        "mqttha.py",
        "pilot.py",
        "provision.py",
        "setupcheck.py",
        "store.py",
        "transfer.py",
        "watchdog.py",
        "web.py",
        "webauth.py",
        "websetup.py",
        "wifi.py",
        "ocpp/__init__.py",
        "ocpp/auth.py",
        "ocpp/connector.py",
        "ocpp/core.py",
        "ocpp/fwmgmt.py",
        "ocpp/localauth.py",
        "ocpp/metering.py",
        "ocpp/recovery.py",
        "ocpp/reservation.py",
        "ocpp/rpc.py",
        "ocpp/schedule.py",
        "ocpp/session.py",
        "ocpp/smartcharging.py",
        "ocpp/status.py",
        "ocpp/trigger.py",
        "ocpp/txqueue.py",
        "ota/__init__.py",
        "ota/boot.py",
        "ota/package.py",
        "ota/partition.py",
        "ota/sign.py",
        "ota/slots.py",
        "ota/update.py",
    ),
    base_path=_REPO,
    opt=3,
)
package("hal", files=("__init__.py", "esp32.py"), base_path=_REPO, opt=3)
package("lib", files=("__init__.py", "ftp.py", "http.py", "mfrc522.py", "modbus.py", "mqtt.py", "tcp.py", "tls.py", "url.py",
                      "ws.py", "wsframe.py"),
        base_path=_REPO, opt=3)
# microdot, the web page's HTTP server, is installed from PyPI into the venv (requirements.txt pins it), never
# copied into this repository: frozen from there, the modules tools/build.py INSTALLED names.
package(
    "microdot",
    files=("__init__.py", "microdot.py"),
    base_path=_REPO + "/.venv/lib/python3.11/site-packages",
    opt=3,
)
