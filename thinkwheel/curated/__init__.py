"""Curate a round's kept candidates into training sets, and let people inspect them.

`export` builds the SFT/GRPO frames and writes them; `card` writes the dataset card;
`inspect` computes funnels, slices and samples; `report` renders the HTML report.
"""

from thinkwheel.curated.export import (
    assistant_content,
    grpo_frame,
    read_dataset,
    sft_frame,
    task_pass_rates,
    write_dataset,
)

__all__ = [
    "assistant_content",
    "grpo_frame",
    "read_dataset",
    "sft_frame",
    "task_pass_rates",
    "write_dataset",
]
