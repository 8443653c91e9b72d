"""The --quant help text, importable without the compiler (the CLI shows it)."""

QUANT_HELP = (
    "Weight format (the compute dtype is --dtype). "
    "q0f32 / q0f16 / q0bf16: float weights. "
    "q8f16: int8, group 32, fp16 scale (= GGUF Q8_0). "
    "q4f16: int4 s*(q-8), group 32, fp16 scale (= GGUF Q4_0). "
    "q4f16_1: int4 s*q+m, group 32, fp16 scale and min (= GGUF Q4_1). "
    "q4f16g128: int4 s*(q-8), group 128, fp16 scale. "
    "q5f16 / q5f16_1: int5, group 32 (= GGUF Q5_0 / Q5_1). "
    "q2_k / q3_k / q4_k / q5_k / q6_k: GGUF's K-quants (super blocks of 256), kept from GGUF files, "
    "never made from floats. "
    "q4_k_m / q5_k_m: llama.cpp's mixes of them, weight by weight (for --random-weights and GGUF files). "
    "4- and 5-bit schemes keep the embedding and LM head in q8f16 (K-quants: q6_k). "
    "Default: a GGUF file's dominant type, each tensor keeping its own type "
    "(Q8_0/Q4_0/Q4_1/Q5_0/Q5_1/Q2_K/Q3_K/Q4_K/Q5_K/Q6_K repacked bit-exactly, F32/F16/BF16 as they are); "
    "otherwise q0f32 on cpu, q0f16 on GPUs."
)
