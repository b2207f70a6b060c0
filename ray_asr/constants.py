"""Whisper's audio input, named once: the data tier (numpy) and the trainers' log-mel (torch) both read these."""

SAMPLE_RATE = 16_000
N_FFT = 400  # 25 ms window at 16 kHz
HOP_LENGTH = 160  # 10 ms hop at 16 kHz
CHUNK_LENGTH_S = 30  # Whisper's fixed input window
N_SAMPLES = CHUNK_LENGTH_S * SAMPLE_RATE  # 480_000 samples per window
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 log-mel frames per window
INT16_SCALE = 32_768.0  # full scale of int16 PCM
