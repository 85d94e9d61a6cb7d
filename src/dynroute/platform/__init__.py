"""The machine: cores, memory and CPU instruction sets (``machine``, torch-free), and
torch devices (``devices``)."""
