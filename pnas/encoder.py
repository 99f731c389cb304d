"""The search space of binary cells and the surrogates that rank them.

A cell is a list of blocks; a block is `(input1, op1, input2, op2)`. Input 0
is the cell input and input k >= 1 the output of block k-1 of the same cell;
with `input_lookback_depth=-1`, input -1 is the previous cell's input.
Operators are indices into `StateSpace.operators`.

Internally a child is a flat tuple of ints `(in1, op1, in2, op2, in1, ...)`.
The original research code represented each of those entries as a `1 x size`
one-hot array holding `index + 1` at the chosen index; `encode` / `decode`
and the representation strings keep that format so that strings copied from
the original logs still decode.
"""

import itertools
import json
import logging
import os
import re

import numpy as np

from pnas.config import ENCODER_READOUTS, ENCODER_TARGETS, SURROGATES

logger = logging.getLogger(__name__)

_ARRAY_RE = re.compile(r"\[\[([^\[\]]*)\]\]")


class RepresentationError(ValueError):
    """A representation string that is malformed or does not fit the space."""


class StateSpace:
    """The search space of PNAS over binary operators.

    Block inputs are numbered as in the original: -1 is the previous cell's
    input (only with input_lookback_depth=-1), 0 the cell input and k >= 1
    the output of the cell's k-th block. The one-hot index of input value v
    is `v - input_lookback_depth`, so with lookback 0 value and index agree.

    Args:
        B: Maximum number of blocks in a cell.
        operators: List of operator names (see `pnas.model.OPERATORS`).
        input_lookback_depth: 0: a block reads the cell input and earlier
            blocks; -1: it may also read the previous cell's input (the PNAS
            paper's cell and the original's default).
        input_lookforward_depth: How many earlier blocks of the same cell a
            new block may read (0: none, None: all of them).
    """

    def __init__(self, B, operators, input_lookback_depth=0, input_lookforward_depth=0):
        if isinstance(B, bool) or not isinstance(B, int) or B < 1:
            raise ValueError(f"`B` must be an int >= 1, received B={B!r}.")
        if not operators:
            raise ValueError(f"`operators` must be a non-empty list, received operators={operators!r}.")
        if len(set(operators)) != len(operators):
            raise ValueError(f"`operators` has duplicates: {operators!r}.")
        if (
            isinstance(input_lookback_depth, bool)
            or not isinstance(input_lookback_depth, int)
            or input_lookback_depth not in (0, -1)
        ):
            raise ValueError(
                "`input_lookback_depth` must be 0 (the cell input) or -1 (also the previous cell's "
                f"input), received input_lookback_depth={input_lookback_depth!r}."
            )
        if input_lookforward_depth is not None and (
            isinstance(input_lookforward_depth, bool)
            or not isinstance(input_lookforward_depth, int)
            or input_lookforward_depth < 0
        ):
            raise ValueError(
                "`input_lookforward_depth` must be None or an int >= 0, "
                f"received input_lookforward_depth={input_lookforward_depth!r}."
            )
        self.B = B
        self.operators = list(operators)
        self.input_lookback_depth = input_lookback_depth
        self.input_lookforward_depth = input_lookforward_depth
        # The input values and the one-hot sizes of the two kinds of state, as in the original.
        self.input_values = list(range(input_lookback_depth, B))
        self.input_size = len(self.input_values)
        self.op_size = len(self.operators)

    # ------------------------------------------------------------------ space
    def block_inputs(self, position):
        """Input values a block at 0-based `position` in its cell may read."""
        depth = self.input_lookforward_depth
        readable = position if depth is None else min(position, depth)
        return list(range(self.input_lookback_depth, readable + 1))

    def new_blocks(self, position):
        """All canonical blocks for 0-based `position`."""
        inputs = self.block_inputs(position)
        operands = list(itertools.product(inputs, range(self.op_size)))
        return [
            a + b for a, b in itertools.combinations_with_replacement(operands, 2)
        ]

    def canonical(self, child):
        """The canonical form of a child: one form per distinct network.

        The two operands of a block commute (their outputs are concatenated),
        so each block is sorted. Blocks commute too, as long as every block
        still reads the same blocks: when no block reads another block's
        output (the cell's inputs, -1 and 0, are not renumbered) the blocks
        are sorted, else the form is the smallest over the block orders that
        the input_lookforward_depth allows, with the inputs renumbered to
        follow their blocks.
        """
        blocks = [tuple(child[i : i + 4]) for i in range(0, len(child), 4)]
        if all(block[0] <= 0 and block[2] <= 0 for block in blocks):
            return tuple(itertools.chain.from_iterable(sorted(_sort_operands(b) for b in blocks)))
        smallest = self._smallest_order(blocks, {})
        if smallest is None:
            raise ValueError(f"no block order of {tuple(child)} is allowed in this space")
        return smallest

    def _smallest_order(self, blocks, position_of):
        """The smallest allowed order of the blocks not in `position_of`, flattened.

        Equal to the minimum over `_orders`, without listing every order:
        blocks are placed one at a time, trying the smallest (renumbered,
        sorted) first. Only blocks that renumber to the same tuple need all
        to be tried, as what reads them may then renumber differently.
        Returns None when no allowed order is left.
        """
        position = len(position_of)
        if position == len(blocks):
            return ()
        allowed = self.block_inputs(position)
        options = {}
        for old, (in1, op1, in2, op2) in enumerate(blocks):
            if old in position_of or any(k > 0 and k - 1 not in position_of for k in (in1, in2)):
                continue
            in1, in2 = (k if k <= 0 else position_of[k - 1] + 1 for k in (in1, in2))
            if in1 in allowed and in2 in allowed:
                options.setdefault(_sort_operands((in1, op1, in2, op2)), []).append(old)
        for block in sorted(options):
            rests = []
            for old in options[block]:
                position_of[old] = position
                rest = self._smallest_order(blocks, position_of)
                del position_of[old]
                if rest is not None:
                    rests.append(rest)
            if rests:
                return block + min(rests)
        return None

    def _orders(self, blocks):
        """Every allowed order of `blocks`, inputs renumbered, operands sorted."""
        orders = set()
        for order in itertools.permutations(range(len(blocks))):
            position_of = {old: new for new, old in enumerate(order)}
            renumbered = []
            for position, old in enumerate(order):
                in1, op1, in2, op2 = blocks[old]
                in1, in2 = (k if k <= 0 else position_of[k - 1] + 1 for k in (in1, in2))
                if in1 not in self.block_inputs(position) or in2 not in self.block_inputs(position):
                    break
                renumbered.append(_sort_operands((in1, op1, in2, op2)))
            else:
                orders.add(tuple(renumbered))
        return sorted(orders)

    def equivalent_forms(self, child):
        """Every token order of `child` that is the same network, the canonical form first.

        A block's two operands commute, and so do blocks wherever the space
        lets them be reordered (`canonical`): the forms are every allowed
        block order, inputs renumbered, with each block's operands either way
        round. A cell of b blocks that read only the cell inputs has up to
        b! * 2**b forms; the canonical form hides them from a sequence model.
        """
        blocks = [tuple(child[i : i + 4]) for i in range(0, len(child), 4)]
        forms = []
        for order in self._orders(blocks):
            swaps = [sorted({block, block[2:] + block[:2]}) for block in order]
            forms += [tuple(itertools.chain.from_iterable(p)) for p in itertools.product(*swaps)]
        first = self.canonical(child)
        return [first] + sorted(set(forms) - {first})

    def initial_children(self):
        """The distinct 1-block children."""
        return [self.canonical(block) for block in self.new_blocks(0)]

    def expand(self, children):
        """Appends every possible block to every child; distinct results in order.

        With a limited input_lookforward_depth > 0 a new block may read only
        the first blocks, so it is appended to every allowed order of the
        child: the canonical order alone would leave some networks out. With
        0 or None every order gives the same networks, so the child's own
        order is enough.
        """
        seen, expanded = set(), []
        for child in children:
            position = len(child) // 4
            if self.input_lookforward_depth in (0, None):
                orders = [tuple(child)]
            else:
                blocks = [tuple(child[i : i + 4]) for i in range(0, len(child), 4)]
                orders = [tuple(itertools.chain.from_iterable(o)) for o in self._orders(blocks)]
            for order in orders:
                for block in self.new_blocks(position):
                    new = self.canonical(order + block)
                    if new not in seen:
                        seen.add(new)
                        expanded.append(new)
        return expanded

    def stage_sizes(self, K):
        """The number of children trained at each b = 1..B with beam size K."""
        children = self.initial_children()
        sizes = [len(children)]
        for _ in range(1, self.B):
            children = self.expand(children)
            if K is not None:
                # Any K children of the expansion give a beam of the same
                # size; take the first to count what the next expansion holds.
                children = children[:K]
            sizes.append(len(children))
        return sizes

    def input_name(self, value):
        """What block input `value` reads, in words."""
        if value == -1:
            return "the previous cell's input"
        return "the cell input" if value == 0 else f"block {value}"

    def print_state_space(self):
        """Prints the states and their values."""
        print("*" * 40, "STATE SPACE", "*" * 40)
        meanings = "-1 = previous cell's input, " if self.input_lookback_depth else ""
        # What each block position may read (INPUT_LOOKFORWARD_DEPTH limits it), not every input value.
        readable = ", ".join(f"block {p + 1} {self.block_inputs(p)}" for p in range(self.B))
        print(f"Block inputs: {readable} ({meanings}0 = cell input, k >= 1 = block k)")
        print(f"Input lookback depth: {self.input_lookback_depth}")
        print(f"Input lookforward depth: {self.input_lookforward_depth}")
        for i, op in enumerate(self.operators):
            print(f"Operator {i}: {op}")
        print()

    def print_total_models(self, K):
        """Prints and returns the number of children the search will train."""
        sizes = self.stage_sizes(K)
        for b, size in enumerate(sizes, start=1):
            print(f"Children trained at b = {b}: {size}")
        total = sum(sizes)
        print(f"Total number of children to train: {total}")
        return total

    # --------------------------------------------------------------- encoding
    def input_index(self, value):
        """One-hot index (0-based) of input value `value`."""
        return value - self.input_lookback_depth

    def encode(self, child):
        """Child tuple -> the original list of `1 x size` arrays (index + 1)."""
        arrays = []
        for i, value in enumerate(child):
            index, size = (self.input_index(value), self.input_size) if i % 2 == 0 else (value, self.op_size)
            array = np.zeros((1, size), dtype=np.float32)
            array[0, index] = index + 1
            arrays.append(array)
        return arrays

    def decode(self, arrays):
        """The original arrays (or any one-hot like arrays) -> child tuple (argmax)."""
        indices = [int(np.argmax(np.asarray(a).ravel())) for a in arrays]
        return tuple(v + self.input_lookback_depth if i % 2 == 0 else v for i, v in enumerate(indices))

    def parse(self, child):
        """Child tuple -> `[input1, 'op1', input2, 'op2', ...]`."""
        return [v if i % 2 == 0 else self.operators[v] for i, v in enumerate(child)]

    def unparse(self, architecture):
        """`[input1, 'op1', ...]` -> child tuple."""
        return tuple(v if i % 2 == 0 else self.operators.index(v) for i, v in enumerate(architecture))

    def representation_string(self, child):
        """The arrays printed by numpy and joined by single spaces."""
        return " ".join(str(a) for a in self.encode(child))

    def from_representation_string(self, text):
        """Parses a representation string; raises `RepresentationError`.

        The string must hold 4 * b arrays, 1 <= b <= B, alternating input
        arrays of size `input_size` (B, or B + 1 with input_lookback_depth=-1)
        and operator arrays of size len(operators), each with exactly one
        non-zero entry.
        """
        expected = (
            f'expected 4*b arrays (1 <= b <= {self.B}) alternating inputs of size {self.input_size} '
            f"and operators of size {self.op_size}, e.g. "
            f'"{self.representation_string((0, 0, 0, 0))}"'
        )
        text = str(text).strip().strip('"').strip("'")
        groups = _ARRAY_RE.findall(text)
        leftover = _ARRAY_RE.sub("", text).strip()
        if not groups or leftover:
            raise RepresentationError(f"malformed representation string {text!r}: {expected}")
        if len(groups) % 4 or len(groups) // 4 > self.B:
            raise RepresentationError(
                f"representation string has {len(groups)} arrays: {expected}"
            )
        indices = []
        for i, group in enumerate(groups):
            try:
                values = np.array([float(v) for v in group.split()])
            except ValueError:
                raise RepresentationError(f"malformed array [[{group}]]: {expected}") from None
            size = self.input_size if i % 2 == 0 else self.op_size
            if values.size != size or np.count_nonzero(values) != 1:
                kind = "input" if i % 2 == 0 else "operator"
                raise RepresentationError(
                    f"array {i + 1} [[{group}]] is not a one-hot {kind} array of size {size}: {expected}"
                )
            indices.append(int(np.argmax(values)))
        child = tuple(v + self.input_lookback_depth if i % 2 == 0 else v for i, v in enumerate(indices))
        for i in range(0, len(child), 2):
            position, value = i // 4, child[i]
            if value not in self.block_inputs(position):
                raise RepresentationError(
                    f"block {position + 1} reads input {value} ({self.input_name(value)}), but with "
                    f"input_lookback_depth={self.input_lookback_depth} and "
                    f"input_lookforward_depth={self.input_lookforward_depth} it may read "
                    f"{self.block_inputs(position)}"
                )
        return child


def _sort_operands(block):
    a, b = tuple(block[:2]), tuple(block[2:])
    return min(a, b) + max(a, b)


def tokens(state_space, child):
    """Child tuple -> LSTM token ids: inputs 1..input_size (by one-hot index), then the operators (0 pads)."""
    return [
        state_space.input_index(v) + 1 if i % 2 == 0 else state_space.input_size + v + 1
        for i, v in enumerate(child)
    ]


class Surrogate:
    """What ranks the candidates for the search: `fit`, `predict`, `rank` and its weight files.

    Subclasses implement `fit(children, rewards)` (returns the training
    loss), `predict(children)`, `weight_files(path)`, `save_weights(path)`
    and `load_weights(path)`, and `steps` (gradient steps so far, or None).
    """

    # Whether it is a Keras model: the search then builds it in a cleared Keras session.
    keras_model = False

    def rank(self, children):
        """`(child, predicted reward)` pairs, best first; ties keep the order of `children`."""
        children = list(children)
        scores = self.predict(children)
        order = np.argsort(-scores, kind="stable")
        return [(children[i], float(scores[i])) for i in order]

    def has_weights(self, path):
        """Whether every file `save_weights(path)` writes exists."""
        return all(os.path.exists(f) for f in self.weight_files(path))


class Encoder(Surrogate):
    """The PNAS surrogate (train.py's default): embedding -> LSTM -> Dense(1), with `fit`, `predict` and `rank`.

    It learns to predict a child's reward from its token sequence. Children
    of every size are trained together: shorter sequences are padded and
    masked. It holds no search state: the search owns the beam, the history
    and the files (`pnas.search`).

    Three target recipes:
    - 'scaled' (default): the rewards are standardised over the training
      set (minus their mean, over their std), then mapped to mean 0.5 and
      std 0.1 for the original's sigmoid output, into its middle, far from
      its flat tails; predictions are mapped back to reward units.
    - 'standardize': the standardised rewards regressed by a linear output.
    - 'raw' (the original's): the sigmoid output regressed on the rewards as
      they are. With rewards near 1 (a budget that trains children to 95 %
      and more) it saturates: every cell gets the same prediction.

    Training follows the original's optimiser: Adam with a staircase decay of
    the learning rate (x0.98 every 500 steps), `epochs` passes over the data
    in mini-batches of `batch_size` (the original trained one child per step).

    Args:
        state_space: The `StateSpace`.
        controller_cells: LSTM units.
        regularization: L2 strength on the encoder's weights.
        epochs: Passes over the training data per `fit`.
        embedding_dim: Size of the token embedding.
        ensemble: Number of encoders; with n > 1 each trains on a different
            (n-1)/n of the data and their predictions are averaged.
        learning_rate: Adam's initial learning rate.
        batch_size: Children per gradient step (None: all in one batch).
        targets: 'scaled', 'standardize' or 'raw' (see above).
        augment: Train on the cell's equivalent forms
            (`StateSpace.equivalent_forms`: blocks reordered where the space
            allows, operands swapped), one drawn afresh for every child in
            every epoch, and predict the mean over all of a cell's forms. The
            canonical form alone hides from the LSTM that these orders are one
            network; with them it learns what an operand adds wherever it
            stands, which is what ranks the longer cells it has not seen.
        readout: 'last': Dense on the LSTM's last output (the original's);
            'mean': Dense on the mean of its outputs over the tokens.
        tensorboard_dir: Write the loss and learning rate of every epoch
            here (None: no summaries).
        jit_compile: Compile the training step with XLA. With one child per
            step, a step's fixed cost outweighs its arithmetic: running
            `STEPS_PER_EXECUTION` steps per call cuts some of it, and XLA
            more, but XLA compiles for several seconds per new encoder, and
            the search builds one per stage. Off by default, as Keras leaves
            it on a CPU; bench/encoder_speed.py measures the three.
    """

    TARGETS = ENCODER_TARGETS
    keras_model = True
    # 'scaled': the standardised rewards' mean and std in the sigmoid's units.
    SCALED_CENTER, SCALED_SPREAD = 0.5, 0.1
    # Gradient steps per call into the compiled training function.
    STEPS_PER_EXECUTION = 32

    def __init__(
        self,
        state_space,
        controller_cells=100,
        regularization=0.0,
        epochs=15,
        embedding_dim=20,
        ensemble=1,
        learning_rate=1e-3,
        batch_size=1,
        targets="scaled",
        augment=False,
        readout="last",
        tensorboard_dir=None,
        jit_compile=False,
    ):
        if targets not in self.TARGETS:
            raise ValueError(f"`targets` must be one of {list(self.TARGETS)}, received targets={targets!r}.")
        if readout not in ENCODER_READOUTS:
            raise ValueError(f"`readout` must be one of {list(ENCODER_READOUTS)}, received readout={readout!r}.")
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"`batch_size` must be None or an int >= 1, received batch_size={batch_size!r}.")
        self.state_space = state_space
        self.epochs = epochs
        self.batch_size = batch_size
        self.targets = targets
        self.augment = augment
        self.readout = readout
        self.tensorboard_dir = tensorboard_dir
        # Reward units of the standardised outputs, set by `fit`.
        self.target_mean, self.target_std = 0.0, 1.0
        # The standardised rewards' mean and std in the output's units.
        self.center, self.spread = (self.SCALED_CENTER, self.SCALED_SPREAD) if targets == "scaled" else (0.0, 1.0)
        vocab = state_space.input_size + state_space.op_size + 1
        self.models = [self._network(vocab, controller_cells, embedding_dim, regularization, learning_rate, jit_compile)
                       for _ in range(ensemble)]

    def _network(self, vocab, controller_cells, embedding_dim, regularization, learning_rate, jit_compile):
        """One member, compiled: embedding, LSTM, dense output (the original's), with the readout and targets set."""
        import keras

        reg = keras.regularizers.L2(regularization) if regularization else None
        lstm = keras.layers.LSTM(
            controller_cells, kernel_regularizer=reg, recurrent_regularizer=reg,
            return_sequences=self.readout == "mean",
        )
        # 'mean': the masked mean of the LSTM's outputs over the tokens.
        pooling = [keras.layers.GlobalAveragePooling1D()] if self.readout == "mean" else []
        model = keras.Sequential(
            [
                keras.Input((None,), dtype="int32"),
                keras.layers.Embedding(vocab, embedding_dim, mask_zero=True, embeddings_regularizer=reg),
                lstm,
                *pooling,
                keras.layers.Dense(
                    1, activation=None if self.targets == "standardize" else "sigmoid", kernel_regularizer=reg
                ),
            ]
        )
        schedule = keras.optimizers.schedules.ExponentialDecay(learning_rate, 500, 0.98, staircase=True)
        model.compile(
            optimizer=keras.optimizers.Adam(schedule), loss="mse", jit_compile=jit_compile,
            steps_per_execution=self.STEPS_PER_EXECUTION,
        )
        return model

    @property
    def steps(self):
        """Gradient steps taken so far (summed over the ensemble's members), loaded weights included."""
        return int(sum(int(m.optimizer.iterations.numpy()) for m in self.models))

    # ------------------------------------------------------------ persistence
    def _model_files(self, path):
        if len(self.models) == 1:
            return [path]
        stem = path[: -len(".weights.h5")]
        return [f"{stem}.{i}.weights.h5" for i in range(len(self.models))]

    def weight_files(self, path):
        """The files `save_weights(path)` writes: `path` or one per ensemble member, and the reward units."""
        units = [self._units_file(path)] if self.targets != "raw" else []
        return self._model_files(path) + units

    def save_weights(self, path):
        """Saves the weights atomically (temporary file, then `os.replace`).

        With standardised targets the reward units (mean, std) go to a JSON
        file beside the weights, so that a restored encoder predicts rewards.
        """
        from mnist.files import atomic_path, write_atomic

        for model, target in zip(self.models, self._model_files(path)):
            with atomic_path(target, suffix=".weights.h5") as tmp:
                model.save_weights(tmp)
        if self.targets != "raw":
            write_atomic(self._units_file(path), json.dumps({"mean": self.target_mean, "std": self.target_std}))

    def load_weights(self, path):
        for model, source in zip(self.models, self._model_files(path)):
            # Build the optimizer first so that its saved state (Adam's
            # moments) is restored too and training continues exactly.
            model.optimizer.build(model.trainable_variables)
            model.load_weights(source)
        if self.targets != "raw" and os.path.exists(self._units_file(path)):
            with open(self._units_file(path)) as f:
                units = json.load(f)
            self.target_mean, self.target_std = float(units["mean"]), float(units["std"])

    @staticmethod
    def _units_file(path):
        return path[: -len(".weights.h5")] + ".units.json"

    # --------------------------------------------------- fit / predict / rank
    def _batch(self, children):
        # One length for every batch (the longest cell): shapes never change, so
        # Keras traces its train and predict functions once.
        length = max([4 * self.state_space.B] + [len(c) for c in children])
        x = np.zeros((len(children), length), dtype=np.int32)
        for row, child in enumerate(children):
            ids = tokens(self.state_space, child)
            x[row, : len(ids)] = ids
        return x

    def fit(self, children, rewards):
        """Trains every member for `epochs` passes over (children, rewards); returns the loss.

        Training continues from the current weights and optimiser state.
        """
        import keras

        from pnas.pipeline import fit_arguments

        if len(rewards) != len(children):
            raise ValueError(f"got {len(rewards)} rewards for {len(children)} children")
        x = self._batch(list(children))
        y = np.asarray(rewards, dtype=np.float32)
        if self.targets != "raw":
            self.target_mean = float(y.mean())
            self.target_std = float(y.std()) if y.std() > 0 else 1.0
            y = self.center + self.spread * (y - self.target_mean) / self.target_std
        forms = [self.state_space.equivalent_forms(c) for c in children] if self.augment else None
        losses = []
        n = len(self.models)
        for i, model in enumerate(self.models):
            # Ensemble member i leaves out every n-th sample, starting at i.
            keep = np.arange(len(y)) % n != i if n > 1 else np.ones(len(y), bool)
            size = int(keep.sum()) if self.batch_size is None else self.batch_size
            callbacks = []
            if self.tensorboard_dir:
                member = "" if n == 1 else f"member{i}"
                callbacks.append(
                    keras.callbacks.TensorBoard(os.path.join(self.tensorboard_dir, member), write_graph=False)
                )
            fit = dict(verbose=0, callbacks=callbacks)
            if forms is None:
                hist = model.fit(**fit_arguments(x[keep], y[keep], max(1, size)), epochs=self.epochs, **fit)
            else:
                # Each epoch shows every child in one of its forms, drawn afresh.
                for epoch in range(self.epochs):
                    xe = self._batch([f[np.random.randint(len(f))] for f in forms])
                    hist = model.fit(**fit_arguments(xe[keep], y[keep], max(1, size)), initial_epoch=epoch,
                                     epochs=epoch + 1, **fit)
            losses.append(hist.history["loss"][-1])
        return float(np.mean(losses))

    def predict(self, children, batch_size=1024):
        """Predicted rewards of `children`, in batched `predict` calls."""
        if not children:
            return np.zeros((0,), np.float32)
        if self.augment:
            # The mean over every form of each child: one prediction per network.
            forms = [self.state_space.equivalent_forms(c) for c in children]
            owner = np.repeat(np.arange(len(children)), [len(f) for f in forms])
            x = self._batch([form for f in forms for form in f])
        else:
            owner, x = np.arange(len(children)), self._batch(children)
        preds = np.mean([m.predict(x, batch_size=batch_size, verbose=0)[:, 0] for m in self.models], axis=0)
        preds = np.bincount(owner, weights=preds) / np.bincount(owner)
        return (preds - self.center) / self.spread * self.target_std + self.target_mean


def op_counts(state_space, child):
    """Features of the ridge surrogate: how often each (input, operator) operand occurs, and the block count."""
    x = np.zeros(state_space.input_size * state_space.op_size + 1)
    for i in range(0, len(child), 2):
        x[state_space.input_index(child[i]) * state_space.op_size + child[i + 1]] += 1
    x[-1] = len(child) // 4
    return x


class RidgeSurrogate(Surrogate):
    """A ridge regression on operand counts (`op_counts`): the baseline surrogate (SURROGATE='ridge').

    A cell's reward is modelled as a sum of what each of its operands adds.
    On the table of the default space (bench/results/space_proxy.csv) it
    ranks the unseen three-block cells about as well as the LSTM trained on
    every equivalent order, in milliseconds and with no TensorFlow
    (docs/surrogate.md). It sees operands, not how
    blocks connect: with `input_lookforward_depth` > 0 two cells that differ
    only in wiring get the same prediction.

    `fit` solves the regression afresh on all it is given (closed form, no
    gradient steps), so earlier weights never matter to a fit: a restored
    ridge only ranks until the next fit.

    Args:
        state_space: The `StateSpace`.
        alpha: The ridge penalty (scikit-learn's `Ridge(alpha)`).
    """

    def __init__(self, state_space, alpha=1.0):
        self.state_space = state_space
        self.alpha = alpha
        self.coef = np.zeros(state_space.input_size * state_space.op_size + 1)
        self.intercept = 0.0

    # No gradient steps: the search prints "closed-form fit" instead of a count.
    steps = None

    def _features(self, children):
        return np.array([op_counts(self.state_space, c) for c in children]).reshape(len(children), -1)

    def fit(self, children, rewards):
        """Fits the regression to (children, rewards); returns the mean squared error on them."""
        from sklearn.linear_model import Ridge

        children = list(children)
        if len(rewards) != len(children):
            raise ValueError(f"got {len(rewards)} rewards for {len(children)} children")
        x, y = self._features(children), np.asarray(rewards, dtype=np.float64)
        model = Ridge(alpha=self.alpha).fit(x, y)
        self.coef, self.intercept = np.asarray(model.coef_, dtype=np.float64), float(model.intercept_)
        return float(np.mean((self.predict(children) - y) ** 2))

    def predict(self, children):
        """Predicted rewards of `children`."""
        children = list(children)
        if not children:
            return np.zeros((0,), np.float64)
        return self._features(children) @ self.coef + self.intercept

    # ------------------------------------------------------------ persistence
    # The search names its encoder files `*.weights.h5`; the ridge keeps its
    # coefficients in a JSON file beside that name.
    def weight_files(self, path):
        """The file `save_weights(path)` writes."""
        stem = path[: -len(".weights.h5")] if path.endswith(".weights.h5") else path
        return [f"{stem}.ridge.json"]

    def save_weights(self, path):
        from mnist.files import write_atomic

        write_atomic(self.weight_files(path)[0], json.dumps(
            {"alpha": self.alpha, "coef": self.coef.tolist(), "intercept": self.intercept}
        ))

    def load_weights(self, path):
        """Loads saved coefficients; ValueError when they belong to another state space."""
        with open(self.weight_files(path)[0]) as f:
            saved = json.load(f)
        coef = np.asarray(saved["coef"], dtype=np.float64)
        if coef.shape != self.coef.shape:
            raise ValueError(
                f"{self.weight_files(path)[0]} has {coef.size} coefficients, this state space {self.coef.size}"
            )
        self.coef, self.intercept = coef, float(saved["intercept"])


def surrogate_class(kind):
    """The class of the surrogate named `kind`: 'lstm' (`Encoder`) or 'ridge' (`RidgeSurrogate`)."""
    classes = {"lstm": Encoder, "ridge": RidgeSurrogate}
    if kind not in classes:
        raise ValueError(f"`kind` must be one of {list(SURROGATES)}, received kind={kind!r}.")
    return classes[kind]


def new_surrogate(state_space, kind="lstm", tensorboard_dir=None, **encoder_kwargs):
    """The surrogate a search ranks with: 'lstm' (`Encoder`, with `encoder_kwargs`) or 'ridge' (`RidgeSurrogate`)."""
    if surrogate_class(kind) is RidgeSurrogate:
        return RidgeSurrogate(state_space)
    return Encoder(state_space, tensorboard_dir=tensorboard_dir, **encoder_kwargs)
