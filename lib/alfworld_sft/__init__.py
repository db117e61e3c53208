"""alfworld-sft: the library behind the course's notebooks and its `alfworld-sft` command (README.md)."""

import logging


class _DropLibraryNoise(logging.Filter):
    """Drops log lines that read as errors but mean nothing for the course: bitsandbytes says on every import, on a
    CPU with AVX512-BF16, that an optional kernel package is missing (it then uses its own kernel, as it should)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Failed to load CPU gemm_4bit_forward")


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_DropLibraryNoise())
