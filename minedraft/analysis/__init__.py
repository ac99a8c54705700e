"""Analysis: the paper's closed forms (`theory`), cost profiles measured through vLLM
(`profile`), the discrete-event serving simulator (`simulate`), the advisor that picks a mode
(`advisor`), and GPU scenarios built from published figures (`scenarios`)."""
