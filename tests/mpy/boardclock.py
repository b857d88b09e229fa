# The charger's loop as the unit tests' rigs play it, in board time: every 10 ms the EVSE's watch, every 50 ms
# its update, every second a meter reading, every 100 ms (at phase) the connector's tick.


def step(board, evse, meter, conn, phase=0):
    """10 ms of board time, without yielding; True when the connector ticked."""
    board.t += 10
    evse.watch()
    if board.t % 50 == 0:
        evse.update()
    if board.t % 1000 == 0:
        meter.step(board)
    if board.t % 100 == phase:
        conn.tick()
        return True
    return False
