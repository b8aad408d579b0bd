"""scopeflow: real-time, microscope-integrated streaming.

Acquisition adapters stream frames over ZeroMQ to inference nodes; a control loop sends
working-distance corrections back to the microscope. See ``docs/`` for the architecture and the
wire protocol.
"""

__version__ = "0.1.0"
