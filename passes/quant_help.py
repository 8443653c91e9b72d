"""The --quant help text, importable without the compiler (the CLI shows it)."""

QUANT_HELP = (
    "Weight format (the compute dtype is --dtype). "
    "q0f32 / q0f16 / q0bf16: float weights. "
    "q8f16: int8, group 32, fp16 scale (= GGUF Q8_0). "
    "q4f16: int4 s*(q-8), group 32, fp16 scale (= GGUF Q4_0). "
    "q4f16_1: int4 s*q+m, group 32, fp16 scale and min (= GGUF Q4_1). "
    "q4f16g128: int4 s*(q-8), group 128, fp16 scale. "
    "4-bit schemes keep the embedding and LM head in q8f16. "
    "Default: a GGUF file's dominant type (each tensor keeping its own type where ember has it: "
    "Q8_0/Q4_0/Q4_1 repacked bit-exactly, F32/F16/BF16 as they are, other types requantized); "
    "otherwise q0f32 on cpu, q0f16 on GPUs."
)
