"""Where the agent's signals come from, one module per source: ``can`` (a CAN bus and its DBC),
``gnss`` (an NMEA 0183 receiver), ``simulated`` (the vehicle model of ``vehicle``)."""
