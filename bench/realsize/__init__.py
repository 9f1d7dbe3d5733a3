"""The parts of bench/gpu_realsize.py: the device, the SD 2.1-base-sized models and the measured stages."""
