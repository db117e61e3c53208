"""The cause of a lost game, read from its record: one hand-made rollout per cause, in the record's real shape, and
the order in which causes are checked."""

import pytest
from alfworld_sft import failures

GAME = "json_2.1.1/valid_seen/pick_and_place_simple-Pillow-None-Sofa-212/trial_T20190907_213524_129712"


def turn(command, observation, how="exact"):
    return {"reply": command or "hmm", "command": command, "how": how, "observation": observation, "admissible": []}


def lost(turns, won=False, game_id=GAME):
    return {
        "game_id": game_id,
        "won": won,
        "first_observation": "You are in the middle of a room. Looking quickly around you, you see a bed 1, a sofa 1.",
        "transcript": [{"plan": "", "won": won, "turns": turns}],
    }


NOTHING = "On the {}, you see a book 1."
LOOP = [turn(f"go to {place}", NOTHING.format(place)) for place in ["shelf 1", "shelf 2", "shelf 3"] * 4]
EXPLORING = [turn(f"go to drawer {n}", NOTHING.format(f"drawer {n}")) for n in range(1, 11)]
SEEN = [*EXPLORING[:3], turn("go to bed 1", "On the bed 1, you see a pillow 1, and a book 2."), *EXPLORING[3:6]]
TAKEN = [*SEEN, turn("take pillow 1 from bed 1", "You pick up the pillow 1 from the bed 1."), *EXPLORING[6:]]
INVALID = [*LOOP[:6], *[turn(None, "Nothing happens.", how="invalid")] * 3]
WRONG = [*EXPLORING[:3], turn("take book 1 from drawer 3", "You pick up the book 1 from the drawer 3."), *LOOP]
LOOP_AFTER_TAKING = [*TAKEN[:8], *LOOP]  # the pillow in hand, then round the shelves (looking for the sofa's place)
# Back and forth between two places, something handled on every visit (pick-two trips): no stretch loops.
TRIPS = [
    step
    for n in range(1, 7)
    for step in (
        turn("go to bed 1", "On the bed 1, you see a pillow 1."),
        turn(f"take pillow {n} from bed 1", f"You pick up the pillow {n} from the bed 1."),
        turn("go to sofa 1", "On the sofa 1, you see nothing."),
        turn(f"move pillow {n} to sofa 1", f"You move the pillow {n} to the sofa 1."),
    )
]


# Ten new places searched, the object found and taken with one turn left: no room to put it (two turns at least).
FOUND_LATE = [*EXPLORING, turn("go to bed 1", "On the bed 1, you see a pillow 1."), TAKEN[7], EXPLORING[0]]


@pytest.mark.parametrize(
    ("turns", "cause"),
    [
        (LOOP, "search_loop"),
        (EXPLORING, "step_limit"),
        (SEEN, "seen_not_taken"),
        (TAKEN, "task_step_missed"),
        (INVALID, "invalid_replies"),
        (EXPLORING[:2], "other"),
        (WRONG, "wrong_object"),
        (LOOP_AFTER_TAKING, "search_loop"),
        (TRIPS, "task_step_missed"),
        (FOUND_LATE, "found_late"),
    ],
)
def test_each_cause_is_read_from_the_record(turns, cause):
    assert failures.classify_failure(lost(turns)) == cause


def test_an_object_whose_name_ends_another_is_not_mistaken_for_it():
    knife = GAME.replace("Pillow", "Knife")
    butter = [*EXPLORING[:6], turn("go to countertop 1", "On the countertop 1, you see a butterknife 1.")]
    assert failures.classify_failure(lost(butter, game_id=knife)) == "step_limit"
    assert failures.target_object(GAME.replace("Pillow", "SaltShaker")) == "saltshaker"


def test_found_late_counts_the_turns_the_task_type_needs_after_taking():
    """A heat task needs four turns after taking its object (go, heat, go, put); a pick-and-place task two."""
    heat = GAME.replace("pick_and_place_simple", "pick_heat_then_place_in_recep")
    three_left = [*EXPLORING, turn("go to bed 1", "On the bed 1, you see a pillow 1."), TAKEN[7], *EXPLORING[:3]]
    assert failures.classify_failure(lost(three_left, game_id=heat)) == "found_late"
    assert failures.classify_failure(lost(three_left)) == "task_step_missed"


def test_counts_cover_every_cause_and_skip_won_games():
    records = [lost(LOOP), lost(LOOP), lost(INVALID), lost(TAKEN, won=True)]
    counts = failures.count_failures(records)
    assert list(counts) == list(failures.CAUSES)
    assert counts["search_loop"] == 2 and counts["invalid_replies"] == 1 and sum(counts.values()) == 3
    assert failures.format_failures(counts) == "invalid_replies 1, search_loop 2"
    assert failures.format_failures(failures.count_failures([])) == "-"
    with pytest.raises(ValueError, match="was won"):
        failures.classify_failure(lost(TAKEN, won=True))
    with pytest.raises(ValueError, match="not an ALFWorld game folder"):
        failures.target_object("json_2.1.1/train/odd/trial_1")
