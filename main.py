# Board entry point: build the board for this port, then hand it to the application.
import sys

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
