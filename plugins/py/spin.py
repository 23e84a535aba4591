"""`spin`, in Python: loops forever, to show that a campaign's fuel stops a
runaway plugin (cause `out_of_fuel`) while the gateway keeps serving."""

import wit_world


class WitWorld(wit_world.WitWorld):
    def handle(self, event):
        n = 0
        while True:
            n = (n + 1) & 0xFFFFFFFF
