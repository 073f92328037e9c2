"""`python -m oracle.meter`: the meter gateway (same as `energykart-meter`)."""

from oracle.meter.cli import main

main()
