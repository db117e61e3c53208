"""ALFWorld game sources: which game files make up a split, from `$ALFWORLD_DATA` or the course's own generator.

(Skeleton: the collection issue fills this module in.)
"""

from __future__ import annotations

# ALFWorld's six task types, numbered as in ALFWorld's config (`env.task_types`).
TASK_TYPES: dict[int, str] = {
    1: "pick_and_place_simple",
    2: "look_at_obj_in_light",
    3: "pick_clean_then_place_in_recep",
    4: "pick_heat_then_place_in_recep",
    5: "pick_cool_then_place_in_recep",
    6: "pick_two_obj_and_place",
}

# The course's split names and the folders `alfworld-download` makes under $ALFWORLD_DATA/json_2.1.1/.
SPLITS: dict[str, str] = {
    "train": "train",
    "eval_in_distribution": "valid_seen",
    "eval_out_of_distribution": "valid_unseen",
    "valid_train": "valid_train",
}
