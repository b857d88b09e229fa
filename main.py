# Board entry point: build the board for this port, then hand it to the application.
import sys

if sys.platform == "esp32":
    from hal.esp32 import Board
else:
    from hal.unix import Board

from firmware import app

app.run(Board())
