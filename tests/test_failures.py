"""The cause of a lost game, read from its record: one hand-made rollout per cause, in the record's real shape, and
the order in which causes are checked."""

import pytest
from alfworld_sft import failures, prompts

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


def test_a_trace_shows_each_revisit_beside_the_memory_line_the_model_read():
    room = "You are in the middle of a room. Looking quickly around you, you see a shelf 1, a shelf 2, a shelf 3."
    record = {**lost(LOOP), "task": "put some pillow on sofa", "first_observation": room}
    rows = failures.trace_search(record, prompts.DEFAULT_PROMPT_FORMAT)
    assert [row["visit"] for row in rows] == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    # Each shelf's contents are seen at its first visit; every later visit goes back to a place already searched.
    assert [row["searched before"] for row in rows] == [False] * 3 + [True] * 9
    assert rows[0]["memory line read"] == ""  # the trained default shows the line from the second turn on
    assert rows[1]["memory line read"] == "not searched: shelf 2-3; seen: none"
    assert rows[3]["memory line read"] == "not searched: none; seen: none"
    ordered = failures.trace_search(record, prompts.PromptFormat(show_memory=True, search_order=True))
    assert ordered[0]["memory line read"] == "not searched: shelf 1-3; seen: none"
    # A model shown no memory line (the base model's format): the column stays empty, the revisits are the same.
    bare = failures.trace_search(record, None)
    assert {row["memory line read"] for row in bare} == {""} and [r["visit"] for r in bare] == [
        r["visit"] for r in rows
    ]
    # A second trial starts with what the first saw before it picked anything up: shelf 1, then nothing more.
    first = [LOOP[0], turn("take book 1 from shelf 1", "You pick up the book 1 from the shelf 1."), LOOP[1]]
    again = {**record, "transcript": [{"plan": "", "won": False, "turns": first}, record["transcript"][0]]}
    second = failures.trace_search(again, prompts.DEFAULT_PROMPT_FORMAT, trial=1)
    assert second[0]["memory line read"] == "not searched: shelf 2-3; seen: none"
    assert [row["searched before"] for row in second[:3]] == [True, False, False]


def test_the_loop_example_is_the_lost_search_loop_with_most_revisits():
    games = [lost(TAKEN), lost(LOOP[:7]), lost(LOOP), lost(LOOP, won=True)]
    assert failures.pick_loop_example(games) is games[2]
    assert failures.pick_loop_example([games[3]]) is games[3]  # nothing lost: the game with most revisits
    assert failures.pick_loop_example([]) is None
