"""The project's measurements: learning curves, throughput, the scripted reference (see README.md here)."""
