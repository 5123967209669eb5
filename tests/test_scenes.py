"""The synthetic scene task: captions, renders and the checker that scores them."""

import random

import numpy as np
import pytest

from sjd_min import scenes


def test_renders_are_a_function_of_the_seed():
    for seed in (0, 1, 12345):
        (c1, a), (c2, b) = scenes.make(seed), scenes.make(seed)
        assert c1 == c2 and np.array_equal(np.asarray(a), np.asarray(b))
    assert len({scenes.make(s)[0] for s in range(50)}) > 30  # seeds differ


def test_captions_parse_back():
    for seed in range(200):
        caption, _ = scenes.make(seed)
        assert scenes.parse(caption).caption == caption


@pytest.mark.parametrize("bad", ["", "a red circle", "a big red circle somewhere", "a big red blob on the left",
                                 "a big red circle above a small red square", "a big red circle near a small blue square"])
def test_parse_rejects_text_outside_the_grammar(bad):
    with pytest.raises(ValueError):
        scenes.parse(bad)


def test_checker_scores_ground_truth_renders_fully():
    results = [scenes.check(img, cap) for cap, img in (scenes.make(s) for s in range(400))]
    assert all(ok for ok, _ in results), [why for ok, why in results if not ok][:5]


def test_checker_rejects_wrong_captions():
    """Negative control: a render checked against another scene's caption fails (almost always)."""
    accepted = total = 0
    for seed in range(300):
        caption, img = scenes.make(seed)
        other = scenes.make(seed + 50_000)[0]
        if other != caption:
            total += 1
            accepted += scenes.check(img, other)[0]
    assert accepted / total < 0.03


@pytest.mark.parametrize("change", ["colour", "shape", "size", "where"])
def test_checker_notices_each_attribute(change):
    """A single-object render fails when exactly one attribute of its caption is changed."""
    rng = random.Random(3)
    wrong = 0
    for _ in range(60):
        scene = scenes.sample_scene(rng, p_two=0.0)
        img = scenes.render(scene, rng)
        o = scene.objects[0]
        if change == "colour":
            o2 = scenes.Obj(o.size, next(c for c in scenes.COLOURS if c != o.colour), o.shape)
            bad = scenes.Scene((o2,), where=scene.where)
        elif change == "shape":
            bad = scenes.Scene((scenes.Obj(o.size, o.colour, next(s for s in scenes.SHAPES if s != o.shape)),),
                               where=scene.where)
        elif change == "size":
            bad = scenes.Scene((scenes.Obj("big" if o.size == "small" else "small", o.colour, o.shape),),
                               where=scene.where)
        else:
            opposite = {"left": "right", "right": "left", "top": "bottom", "bottom": "top", "center": "left"}
            bad = scenes.Scene((o,), where=opposite[scene.where])
        wrong += not scenes.check(img, bad.caption)[0]
    assert wrong == 60


def test_checker_notices_swapped_relations_and_extra_objects():
    rng = random.Random(5)
    flip = {"above": "below", "below": "above", "left": "right", "right": "left"}
    for _ in range(60):
        scene = scenes.sample_scene(rng, p_two=1.0)
        img = scenes.render(scene, rng)
        swapped = scenes.Scene(scene.objects, relation=flip[scene.relation])
        assert not scenes.check(img, swapped.caption)[0]
        only_first = scenes.Scene(scene.objects[:1], where="center")  # the second object is unexpected
        assert scenes.check(img, only_first.caption) != (True, "ok")


def test_blank_image_fails():
    blank = np.zeros((scenes.IMAGE, scenes.IMAGE, 3), dtype=np.uint8)
    ok, why = scenes.check(blank, "a big red circle on the left")
    assert not ok and "no red" in why


def test_eval_prompt_set_covers_the_grammar():
    caps = scenes.eval_captions()
    assert len(caps) >= 300 and caps == scenes.eval_captions()
    parsed = [scenes.parse(c) for c in caps]
    assert sum(len(s.objects) == 2 for s in parsed) >= len(caps) / 2
    objs = [o for s in parsed for o in s.objects]
    assert {o.colour for o in objs} == set(scenes.COLOURS) and len(scenes.COLOURS) >= 6
    assert {o.shape for o in objs} == set(scenes.SHAPES) and {o.size for o in objs} == set(scenes.SIZES)
    assert {s.where for s in parsed if s.where} == set(scenes.WHERE.values())
    assert {s.relation for s in parsed if s.relation} == set(scenes.RELATIONS.values())


def test_batch_matches_make():
    caps, x = scenes.batch([7, 8])
    assert x.shape == (2, 3, scenes.IMAGE, scenes.IMAGE) and float(x.min()) >= -1 and float(x.max()) <= 1
    assert caps[0] == scenes.make(7)[0]
    assert np.array_equal(scenes.to_uint8(x)[1], np.asarray(scenes.make(8)[1]))
