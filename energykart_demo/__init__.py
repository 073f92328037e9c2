"""The Energy-Kart demo: a microgrid's trading day on a local chain, settled by the real oracle."""
