"""shuffle=False (--no-shuffle) takes each epoch's training rows in stored order: one global order, whatever the
layout, so a run is the same mini-batch steps a hand-written loop over the rows would take."""

import argparse

import numpy as np

import distbp
from distbp.comm.serial import SerialComm
from distbp.config import add_arguments, from_sources
from distbp.data.shard import LocalRows, SharedRows, rank_slice

ROWS, FEATURES, CLASSES, BATCH = 50, 6, 3, 8


def data():
    rng = np.random.default_rng(4)
    X = rng.standard_normal((ROWS, FEATURES))
    return X, (X[:, 0] + X[:, 1] > 0).astype(np.int64) + (X[:, 2] > 1)


def model():
    return distbp.MLP([FEATURES, 7, CLASSES], activation="tanh", dtype="float64", seed=2)


OPTIONS = dict(optimizer="gd", lr=0.02, seed=5, scale="none", timeout=0, comm=SerialComm(), verbose=False)


def test_every_epoch_takes_the_rows_in_stored_order_in_global_batches():
    for size in (1, 3):
        for rank in range(size):
            plan = SharedRows(ROWS, BATCH, seed=5, my_rows=lambda n, r=rank: rank_slice(n, r, size), rank=rank,
                              size=size, shuffle=False)
            for epoch in (0, 1, 7):
                steps = plan.epoch(epoch)
                assert len(steps) == -(-ROWS // BATCH)
                for k, (rows, batch_rows) in enumerate(steps):
                    start = k * BATCH
                    r0, r1 = rank_slice(batch_rows, rank, size)
                    assert rows.tolist() == list(range(start + r0, start + r1))
    shuffled = SharedRows(ROWS, BATCH, seed=5, my_rows=lambda n: (0, n)).epoch(0)
    assert np.concatenate([rows for rows, _ in shuffled]).tolist() != list(range(ROWS))  # the default shuffles


def test_each_rank_takes_its_own_rows_in_stored_order_with_local_rows():
    plan = LocalRows([20, 13], [0, 0], rank=1, batch_size=BATCH, seed=5, shuffle=False)
    for epoch in (0, 3):
        assert np.concatenate([rows for rows, _ in plan.epoch(epoch)]).tolist() == list(range(13))


def test_a_fit_without_shuffling_is_the_loop_over_the_mini_batches_in_order():
    X, y = data()
    whole = model()
    distbp.fit(whole, X, y, epochs=2, batch_size=BATCH, shuffle=False, **OPTIONS)
    # the same steps, one fit per mini-batch (a fit of one batch has one step, whatever its order); plain
    # gradient descent keeps no state between the calls
    by_hand = model()
    for _ in range(2):
        for start in range(0, ROWS, BATCH):
            rows = slice(start, start + BATCH)
            distbp.fit(by_hand, X[rows], y[rows], epochs=1, batch_size=BATCH, **OPTIONS)
    np.testing.assert_allclose(whole.flat_params, by_hand.flat_params, rtol=1e-12, atol=1e-14)
    shuffled = model()
    distbp.fit(shuffled, X, y, epochs=2, batch_size=BATCH, **OPTIONS)
    assert np.abs(shuffled.flat_params - by_hand.flat_params).max() > 1e-6  # the control: order matters here


def test_the_command_line_says_no_shuffle():
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_arguments(parser)
    assert from_sources(parser.parse_args([])).shuffle is True
    assert from_sources(parser.parse_args(["--no-shuffle"])).shuffle is False
