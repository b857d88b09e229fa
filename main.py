# Board entry point: build the board for this port, then hand it to the application.
import os
import sys

try:
    # make deploy (tools/deploy.py) leaves this file before the reset that starts an install: the firmware stays
    # off for that one boot, so no watchdog gets armed while files are copied (an ESP32's cannot be stopped)
    os.remove("deploy.hold")
    held = True
except OSError:
    held = False

if held:
    print("main.py: deploy.hold: the firmware does not start this boot")
else:
    try:
        if sys.platform == "esp32":
            from hal.esp32 import Board
        else:
            from hal.unix import Board
        from firmware import app

        app.run(Board())
    except Exception as e:
        import slotboot

        slotboot.crashed(e)  # a new firmware slot on trial that raises is given up at once (docs/ota.md)
        raise
