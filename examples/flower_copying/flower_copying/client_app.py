"""ClientApp: local LoRA fine-tuning and masked accuracy on the client's own task.

* **train**: load the LoRA factors the server sent (its personalised adapter with
  CLAIR, the global one with FedAvg / FedMedian), fine-tune them ``local-steps``
  AdamW steps on the client's ``n-train`` sequences
  (:func:`simulations.copying.training.fine_tune`), send back the factors in PEFT
  naming with a MetricRecord: ``num-examples``, ``train-loss``, ``local-accuracy``
  (test accuracy of the adapter just trained, before aggregation) and
  ``partition-id``;
* **evaluate**: masked accuracy of the received factors on the client's ``n-test``
  held-out sequences: ``accuracy``, ``num-examples``, ``partition-id`` and
  ``benign`` (1.0 or 0.0, from the design; only for the report).
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from flower_copying import task

app = ClientApp()


def _setup(context: Context):
    run_config = context.run_config
    client = int(context.node_config["partition-id"])
    n_clients = int(context.node_config["num-partitions"])
    settings = task.make_settings(run_config, n_clients)
    folder = task.cache_dir(run_config) / "checkpoints"
    model = task.load_model(settings, folder)
    seed = int(run_config["seed"])
    train, test = task.client_data(settings, seed, client)
    return settings, client, seed, model, train, test


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Fine-tune the received adapter locally and send back its factors."""
    settings, client, seed, model, train_batch, test_batch = _setup(context)
    from simulations.copying.training import fine_tune, weighted_loss

    server_round = int(msg.content["config"].get("server-round", 0))
    init = task.from_arrays(msg.content["arrays"])
    rng = np.random.default_rng([seed, client, server_round, 2])
    fine_tune(model, init, train_batch, settings.fine_tune_config(), rng)
    with torch.no_grad():
        loss = float(weighted_loss(model, train_batch, settings.copy_weight))
    state = model.adapter_state()
    local = task.evaluate_adapters(model, state, test_batch)
    metrics = MetricRecord(
        {
            "num-examples": len(train_batch),
            "train-loss": loss,
            "local-accuracy": local,
            "partition-id": client,
        }
    )
    content = RecordDict({"arrays": task.to_arrays(state), "metrics": metrics})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Masked accuracy of the received adapter on the client's held-out data."""
    settings, client, _, model, _, test_batch = _setup(context)
    adapters = task.from_arrays(msg.content["arrays"])
    accuracy = task.evaluate_adapters(model, adapters, test_batch)
    benign = task.client_kinds(settings)[client] == "benign"
    metrics = MetricRecord(
        {
            "accuracy": accuracy,
            "num-examples": len(test_batch),
            "partition-id": client,
            "benign": 1.0 if benign else 0.0,
        }
    )
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
