"""The price fields, named as in LiteLLM's price file (no Django imports: the request path uses them)."""

#: token prices (USD per token)
TOKEN_FIELDS = (
    "input_cost_per_token",
    "output_cost_per_token",
    "cache_read_input_token_cost",
    "cache_creation_input_token_cost",
    "cache_creation_input_token_cost_above_1hr",
    "output_cost_per_reasoning_token",
    "input_cost_per_token_above_200k_tokens",
    "output_cost_per_token_above_200k_tokens",
    "cache_read_input_token_cost_above_200k_tokens",
    "cache_creation_input_token_cost_above_200k_tokens",
)
#: image prices (USD per image)
IMAGE_FIELDS = ("input_cost_per_image", "output_cost_per_image")
PRICE_FIELDS = TOKEN_FIELDS + IMAGE_FIELDS

#: other spellings accepted when loading (the original router's)
ALIASES = {"input_cost_per_cached_token": "cache_read_input_token_cost"}
