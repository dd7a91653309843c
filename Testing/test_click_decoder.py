"""The click decoder (issue #25, arm B): it moves a shifted run of vertebrae after one click
once trained, it never moves a fixed point, and model folders carry it like any other part."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from interactive_keypoints.click_decoder import (
    FEATURES,
    ClickDecoder,
    ClickDecoderConfig,
    ClickDecoderNet,
    StackedMembers,
    add_click_decoder,
    decoder_features,
)
from interactive_keypoints.config import ModelFormatError
from interactive_keypoints.errors import UsageError
from interactive_keypoints.inference import Predictor
from interactive_keypoints.model_io import load_model, save_model
from interactive_keypoints.phantom import spine_corners
from interactive_keypoints.session import KeypointSession
from interactive_keypoints.tiny_model import tiny_model, with_tiny_click_decoder
from interactive_keypoints.train_decoder import (
    ClickStates,
    curves,
    decoder_batch,
    first_picks,
    fit,
    mirrored,
    train_review_head,
)

VERTEBRAE = 17


def shifted_run_states(seed: int, images: int) -> ClickStates:
    """Phantom spines whose "network" puts a run of 3-6 vertebrae one level off (each takes its
    neighbour's corners) and does not react to the click; the user clicks the worst point."""
    rng = np.random.default_rng(seed)
    raw, order, truth = [], [], []
    for _ in range(images):
        corners = spine_corners(rng, 1024, 512)  # (17, 4, 2)
        start, length, step = rng.integers(2, VERTEBRAE - 8), rng.integers(3, 7), rng.choice([-1, 1])
        guess = corners.copy()
        guess[start : start + length] = corners[start + step : start + length + step]
        guess = guess.reshape(-1, 2) + rng.normal(0, 1.0, (4 * VERTEBRAE, 2))
        points = corners.reshape(-1, 2)
        worst = int(np.linalg.norm(guess - points, axis=1).argmax())
        raw.append(np.stack([guess, guess]))
        order.append([worst])
        truth.append(points)
    return ClickStates(np.stack(raw), np.array(order), np.stack(truth))


def run_error(batch, network) -> float:
    """MRE (px) of the free points after one click, with the decoder's offsets."""
    return curves(network, batch)[1][1]


@pytest.mark.slow
def test_a_few_training_steps_move_a_shifted_run_after_one_click():
    torch.manual_seed(0)
    train = decoder_batch(shifted_run_states(0, 128), correction_length=0.0, correction_noise=0.3)
    test = decoder_batch(shifted_run_states(1, 16), correction_length=0.0, correction_noise=0.3)
    network = ClickDecoderNet(ClickDecoderConfig(4 * VERTEBRAE, group=4, width=32, layers=2, max_clicks=1))
    untrained_error = run_error(test, network)
    field_error = curves(network, test)[1][0]
    assert untrained_error == pytest.approx(field_error)  # an untrained decoder leaves the points
    training = fit(
        network, train.features, train.targets(), ~train.fixed, 50, batch_size=16, lr=2e-3, weight_decay=1e-3, seed=0
    )
    losses = [loss for _, loss in training]
    assert losses[-1] < losses[0]
    assert run_error(test, network) < 0.5 * untrained_error  # the run follows the click (measured: 0.38)


@pytest.mark.slow
def test_a_trained_check_next_head_points_at_the_shifted_run():
    torch.manual_seed(0)
    states = {seed: shifted_run_states(seed, images) for seed, images in ((0, 128), (1, 32))}
    train, test = (
        decoder_batch(s, correction_length=0.0, correction_noise=0.3, first_count=0) for s in states.values()
    )
    network = ClickDecoderNet(
        ClickDecoderConfig(4 * VERTEBRAE, group=4, width=32, layers=2, max_clicks=1, review_members=1)
    )
    untrained = first_picks(network, test)[0]  # all scores equal: the first landmark, about right
    options = SimpleNamespace(epochs=30, batch_size=16, lr=2e-3, weight_decay=1e-3, seed=0)
    losses = train_review_head(network, train, options)
    assert losses[-1][1] < losses[0][1]
    picked, worst = first_picks(network, test)[0]  # before any click
    assert untrained[0] < 0.1 * worst  # measured: 0.02 x
    assert picked > 0.5 * worst  # mostly a point of the shifted run (measured: 0.72 x)


def test_the_head_ranks_the_sessions_points_and_is_the_default_only_where_it_exists(phantom):
    model = with_tiny_click_decoder(tiny_model(), review_members=2)
    session = KeypointSession(model, phantom.image)
    assert session.review_score_name == "decoder"
    first = session.predict()
    assert np.isfinite(first.review_score).all() and np.ptp(first.review_score) > 0
    clicked = session.refine({4: first.points[4] + 3.0})
    assert clicked.review_score[4] == -np.inf and np.isfinite(np.delete(clicked.review_score, 4)).all()
    assert KeypointSession(model, phantom.image, review_score="spread").review_score_name == "spread"
    for without_head in (tiny_model(), with_tiny_click_decoder(tiny_model())):
        assert KeypointSession(without_head, phantom.image).review_score_name != "decoder"
        with pytest.raises(UsageError, match="check-next head"):
            KeypointSession(without_head, phantom.image, review_score="decoder")
    with pytest.raises(UsageError, match="check-next head"):  # the decoder switched off takes its head along
        KeypointSession(model, phantom.image, click_decoder=False, review_score="decoder")


def test_mirrored_states_are_the_left_right_image_of_each_state():
    batch = decoder_batch(shifted_run_states(0, 3), correction_length=0.1, correction_noise=0.3)
    pairs = [(4 * v + side, 4 * v + side + 1) for v in range(VERTEBRAE) for side in (0, 2)]  # left <-> right corners
    both = mirrored(batch, pairs)
    assert len(both.clicks) == 2 * len(batch.clicks) and np.array_equal(both.clicks[3:], batch.clicks)
    swap = np.arange(4 * VERTEBRAE).reshape(-1, 2)[:, ::-1].reshape(-1)
    original, mirror = batch.targets().numpy(), both.targets().numpy()[3:]
    assert np.allclose(mirror[:, :, 0], -original[:, swap, 0], atol=1e-6)  # x turned over, y kept
    assert np.allclose(mirror[:, :, 1], original[:, swap, 1], atol=1e-6)
    assert np.array_equal(both.fixed[3:], batch.fixed[:, swap]) and np.allclose(both.extent[3:], batch.extent)
    # the features are those of the mirrored states: centred x turned over and swapped
    assert torch.allclose(both.features[3:, :, 0], -batch.features[:, swap, 0], atol=1e-5)


def test_fixed_points_stay_where_the_user_put_them_and_the_free_ones_move(phantom):
    model = with_tiny_click_decoder(tiny_model())
    with_decoder = KeypointSession(model, phantom.image)
    without = KeypointSession(model, phantom.image, click_decoder=False)
    assert np.array_equal(with_decoder.predict().points, without.predict().points)  # no click: no decoder
    target = with_decoder.prediction.points[5] + [3.0, -4.0]
    moved = with_decoder.refine({5: target})
    plain = without.refine({5: target})
    assert np.array_equal(moved.points[5], target)
    assert not np.allclose(np.delete(moved.points, 5, 0), np.delete(plain.points, 5, 0))
    # beyond max_clicks (2) the field's points stand
    for index in (7, 9):
        moved = with_decoder.refine({index: phantom.points[index]})
        plain = without.refine({index: phantom.points[index]})
    assert np.array_equal(moved.fixed, plain.fixed)
    assert np.allclose(moved.points, plain.points)


def test_a_model_folder_carries_its_decoder_and_one_without_behaves_as_before(tmp_path, phantom):
    plain = tiny_model()
    save_model(tmp_path / "plain", plain)
    loaded = load_model(tmp_path / "plain")
    assert loaded.click_decoder is None and Predictor(loaded).click_decoder is None
    assert "click_decoder" not in json.loads((tmp_path / "plain" / "model.json").read_text())

    decoder = with_tiny_click_decoder(tiny_model()).click_decoder
    save_model(tmp_path / "with", plain)
    add_click_decoder(tmp_path / "with", decoder)
    reloaded = load_model(tmp_path / "with")
    assert reloaded.click_decoder_config == decoder.config
    for name, tensor in decoder.state_dict().items():  # stored fp16, upcast on load
        assert torch.equal(reloaded.click_decoder.state_dict()[name], tensor.half().float())
    first, second = KeypointSession(reloaded, phantom.image), KeypointSession(loaded, phantom.image)
    start = first.predict().points
    assert np.array_equal(start, second.predict().points)
    assert not np.allclose(first.refine({3: start[3] + 5}).points, second.refine({3: start[3] + 5}).points)


def test_a_decoder_that_does_not_fit_its_folder_is_refused_by_name(tmp_path):
    folder = tmp_path / "model"
    save_model(folder, tiny_model())
    add_click_decoder(folder, with_tiny_click_decoder(tiny_model()).click_decoder)
    config = json.loads((folder / "model.json").read_text())

    config["click_decoder"]["width"] = 32  # weights of another width
    (folder / "model.json").write_text(json.dumps(config))
    with pytest.raises(ModelFormatError, match="click_decoder.safetensors does not match"):
        load_model(folder)

    config["click_decoder"] |= {"width": 16, "group": 5}  # 68 landmarks are not groups of 5
    (folder / "model.json").write_text(json.dumps(config))
    with pytest.raises(ModelFormatError, match="group"):
        load_model(folder)

    config["click_decoder"]["group"] = 4
    (folder / "model.json").write_text(json.dumps(config))
    (folder / "click_decoder.safetensors").unlink()
    with pytest.raises(ModelFormatError, match="declares a click decoder but .* is missing"):
        load_model(folder)


@pytest.mark.slow
def test_train_decoder_writes_a_folder_that_evaluate_runs_with_and_without(tmp_path):
    from interactive_keypoints import cli

    out = tmp_path / "decoder"
    common = ["--dataset", "phantom", "--phantom-images", "4"]
    assert cli.main(["train-decoder", "--model", "models/phantom-spine-68", *common, "--clicks", "1", "--group", "4", "--members", "2",
                     "--mirror", "--epochs", "2", "--threads", "1", "--quiet", "--out", str(out)]) == 0  # fmt: skip
    assert (load_model(out).click_decoder_config.max_clicks, load_model(out).click_decoder_config.members) == (1, 2)
    trained = load_model(out).click_decoder_config.trained
    assert trained["mirrored"] and trained["train_states"] % 2 == 0  # each state and its mirror image
    assert (out / "decoder_log.csv").read_text().startswith("epoch,train_loss")
    assert cli.main(["evaluate", "--model", str(out), *common, "--split", "val", "--limit", "2", "--max-clicks", "2",
                     "--click-decoder", "both", "--quiet", "--out", str(tmp_path / "eval")]) == 0  # fmt: skip
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["click_decoder_used"] is True
    assert set(metrics["click_decoder"]) >= {"with", "without"}

    # a second round on the clicks the first decoder's points draw; a folder without one is refused
    again = ["train-decoder", *common, "--clicks", "1", "--group", "4", "--epochs", "1", "--on-policy", "--quiet"]
    assert cli.main([*again, "--model", str(out), "--out", str(tmp_path / "round2")]) == 0
    assert json.loads((tmp_path / "round2" / "cache" / "click_states_train.json").read_text())["key"]["on_policy"]
    assert cli.main([*again, "--model", "models/phantom-spine-68", "--out", str(tmp_path / "refused")]) == 2

    # a check-next head for the first round's decoder, its offsets kept; the guided user ranks by it
    head = tmp_path / "head"
    assert (
        cli.main([*again[:-2], "--review-only", "--review-members", "1", "--model", str(out), "--out", str(head)]) == 0
    )
    assert load_model(head).click_decoder_config.review_members == 1
    for name, tensor in load_model(out).click_decoder.members.state_dict().items():
        assert torch.equal(load_model(head).click_decoder.members.state_dict()[name], tensor)
    assert (head / "decoder_log.csv").read_text().startswith("epoch,review_loss")
    assert cli.main(["evaluate", "--model", str(head), *common, "--split", "val", "--limit", "2", "--max-clicks", "2",
                     "--user", "guided", "--quiet", "--out", str(tmp_path / "guided")]) == 0  # fmt: skip
    assert json.loads((tmp_path / "guided" / "metrics.json").read_text())["guided"]["review_score"] == "decoder"


@pytest.mark.slow
def test_cross_fitted_states_come_from_the_fold_model_that_did_not_train_on_each_image(tmp_path):
    from interactive_keypoints import cli, train
    from interactive_keypoints.data.common import load_grey_image
    from interactive_keypoints.train_decoder import held_out_images

    common = ["--dataset", "phantom", "--phantom-images", "8"]
    folds = [tmp_path / f"fold{k}" for k in (1, 2)]
    for k, folder in enumerate(folds, 1):
        assert train.main([*common, "--hold-out-fold", f"{k}/2", "--width", "18", "--input", "256x128", "--epochs", "1",
                           "--max-steps", "1", "--threads", "1", "--seed", str(k), "--quiet", "--out", str(folder)]) == 0  # fmt: skip
    held = [held_out_images(folder) for folder in folds]
    decoder = ["train-decoder", "--model", "models/phantom-spine-68", *common, "--clicks", "1", "--group", "4",
               "--epochs", "1", "--threads", "1", "--quiet"]  # fmt: skip
    out = tmp_path / "crossfit"
    assert cli.main([*decoder, "--fold-models", *map(str, folds), "--out", str(out)]) == 0
    assert not (out / "cache" / "click_states_train.json").exists()  # validation's come from --model
    assert (out / "cache" / "click_states_val.json").exists()
    for k, ids in enumerate(held, 1):
        cached = json.loads((out / "cache" / f"click_states_train_fold{k}.json").read_text())["states"]
        assert set(cached) == ids
    # an image of fold 1: its 0-click points are fold 1's network's, not the target's
    image_id = sorted(held[0])[0]
    training_images = train.load_splits(train.recipes.DataSection(dataset="phantom", phantom_images=8), (256, 128))[0]
    sample = next(s for s in training_images.samples if s.id == image_id)
    session = KeypointSession(load_model(folds[0]), load_grey_image(sample), local_stage=False, click_decoder=False)
    session.predict()
    cached = json.loads((out / "cache" / "click_states_train_fold1.json").read_text())["states"][image_id]
    np.testing.assert_allclose(cached["raw"][0], session.network_points, atol=1e-3)
    target_model = load_model("models/phantom-spine-68")
    target = KeypointSession(target_model, load_grey_image(sample), local_stage=False, click_decoder=False)
    target.predict()
    assert np.abs(np.asarray(cached["raw"][0]) - target.network_points).max() > 1.0
    assert load_model(out).click_decoder_config.trained["fold_models"] == [str(f) for f in folds]
    phantom_train_images = len(training_images.samples)
    assert load_model(out).click_decoder_config.trained["train_states"] == phantom_train_images  # 1 click each

    # with the target's own states beside them: twice the states, the own ones cached apart
    both = tmp_path / "both"
    assert cli.main([*decoder, "--fold-models", *map(str, folds), "--with-own-states", "--out", str(both)]) == 0
    assert load_model(both).click_decoder_config.trained["train_states"] == 2 * phantom_train_images
    own = json.loads((both / "cache" / "click_states_train.json").read_text())
    assert own["key"]["model"] == "models/phantom-spine-68" and set(own["states"]) == set().union(*held)
    assert cli.main([*decoder, "--with-own-states", "--out", str(tmp_path / "own-only")]) == 2  # needs folds

    # folds that do not cover the training images once each, or a folder that held none out: refused
    assert cli.main([*decoder, "--fold-models", str(folds[0]), "--out", str(tmp_path / "one")]) == 2
    assert cli.main([*decoder, "--fold-models", "models/phantom-spine-68", "--out", str(tmp_path / "none")]) == 2


def test_cached_states_belong_to_the_weights_the_field_and_the_clicking_decoder():
    import dataclasses

    from interactive_keypoints.train_decoder import states_fingerprint

    model = tiny_model()
    first = states_fingerprint(model, on_policy=False)
    assert states_fingerprint(tiny_model(), on_policy=False) == first  # the same weights: reused
    assert states_fingerprint(tiny_model(seed=1), on_policy=False) != first  # retrained in place: not
    model.config = dataclasses.replace(model.config, correction_length=model.config.correction_length + 0.05)
    assert states_fingerprint(model, on_policy=False) != first  # another field
    limited = tiny_model()
    limited.config = dataclasses.replace(limited.config, propagation_limit=0.5)
    assert states_fingerprint(limited, on_policy=False) != first  # another propagation limit
    decoded = with_tiny_click_decoder(tiny_model())
    assert states_fingerprint(decoded, on_policy=False) == first  # the decoder only counts when it picks the clicks
    on_policy = states_fingerprint(decoded, on_policy=True)
    assert on_policy != first and states_fingerprint(with_tiny_click_decoder(tiny_model(), seed=1), True) != on_policy


def test_a_check_next_head_leaves_the_offsets_training_as_it_was():
    batch = decoder_batch(shifted_run_states(0, 8), correction_length=0.0, correction_noise=0.3)
    trained = []
    for review_members in (0, 2):
        torch.manual_seed(0)
        network = ClickDecoderNet(
            ClickDecoderConfig(4 * VERTEBRAE, group=4, width=16, layers=1, max_clicks=1, review_members=review_members)
        )
        for _ in fit(network.members[0], batch.features, batch.targets(), ~batch.fixed, 2, 4, 1e-3, 0.0, seed=0):
            pass  # dropout draws from the global generator: the head must not shift it
        trained.append(network.members[0].state_dict())
    assert all(torch.equal(trained[0][name], trained[1][name]) for name in trained[0])


def test_the_stacked_members_give_what_each_member_gives():
    # inference runs all members in one batched pass; it must equal the members' own forward
    torch.manual_seed(0)
    config = ClickDecoderConfig(4 * VERTEBRAE, group=4, width=32, heads=4, layers=2, members=3, review_members=2)
    network = ClickDecoderNet(config).eval()
    for parameter in network.parameters():  # (the output layers start at zero: give them weights)
        torch.nn.init.normal_(parameter, std=0.2)
    features = torch.randn(5, 4 * VERTEBRAE, FEATURES)
    with torch.inference_mode():
        offsets = StackedMembers(network.members)(features)
        head = StackedMembers(network.review)(features)
        assert offsets.shape == (3, 5, 4 * VERTEBRAE, 2) and head.shape == (2, 5, 4 * VERTEBRAE, 1)
        for stacked, member in zip(offsets, network.members):
            assert torch.allclose(stacked, member(features), atol=1e-5)
        assert torch.allclose(offsets.mean(0), network(features), atol=1e-5)
        assert torch.allclose(head[..., 0].mean(0), network.log_error(features), atol=1e-5)
    # the decoder a session uses gives the network's offsets
    decoder = ClickDecoder(config, network)
    rng = np.random.default_rng(0)
    raw, raw0, shown = (rng.uniform(0, 100, (4 * VERTEBRAE, 2)) for _ in range(3))
    fixed = np.zeros(4 * VERTEBRAE, bool)
    fixed[[2, 9]] = True
    features, extent = decoder_features(raw, raw0, shown, fixed, np.array(2))
    with torch.inference_mode():
        expected = shown + network(torch.from_numpy(features)[None])[0].double().numpy() * extent
    corrected = decoder.correct(raw, raw0, shown, fixed)
    assert np.allclose(corrected[~fixed], expected[~fixed], atol=1e-3) and np.array_equal(
        corrected[fixed], shown[fixed]
    )
    assert np.abs(corrected - shown).max() > 1.0  # the offsets are not trivially zero
