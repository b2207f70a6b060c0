"""ray-asr: fine-tune OpenAI Whisper on your own speech with Ray Data, Ray Train and DeepSpeed."""

__version__ = "0.1.0"
