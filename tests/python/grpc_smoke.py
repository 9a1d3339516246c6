#!/usr/bin/env python3
"""Drives every RPC of a synckit-node's gRPC front end from Python, and one Subscribe delivery.

Stubs are generated at run time from proto/synckit.proto by grpcio-tools into a temporary
directory. The node must run with grants and quick blocks, e.g.
`synckit-node serve --initial-balance 1000 --difficulty-bits 4 --block-interval-ms 100`.

    python3 tests/python/grpc_smoke.py --addr 127.0.0.1:7880

Prints one line per check and a summary line `grpc smoke: N passed, N failed`; exits non-zero on
any failure. `node/tests/grpc.rs` runs it against a node it starts.
"""

import argparse
import os
import queue
import secrets
import subprocess
import sys
import tempfile
import threading
import time

PASSWORD = "correct horse battery"


def generate_stubs(proto_dir, out_dir):
    subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc",
            "-I", proto_dir,
            "--python_out=" + out_dir,
            "--grpc_python_out=" + out_dir,
            os.path.join(proto_dir, "synckit.proto"),
        ],
        check=True,
    )
    sys.path.insert(0, out_dir)


class Smoke:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, name, condition, detail=""):
        if condition:
            self.passed += 1
            print(f"ok   {name}")
        else:
            self.failed += 1
            print(f"FAIL {name} {detail}")

    def refused(self, name, call, code, code_name):
        """`call()` must fail with `code` and a message starting with `code_name: `."""
        import grpc
        try:
            call()
        except grpc.RpcError as error:
            self.check(
                name,
                error.code() == code and error.details().startswith(code_name + ": "),
                f"got {error.code()} {error.details()!r}",
            )
            return error
        self.check(name, False, "the call succeeded")
        return None


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", default="127.0.0.1:7880")
    parser.add_argument("--proto-dir", default=os.path.join(here, "..", "..", "proto"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="synckit-grpc-") as out_dir:
        generate_stubs(args.proto_dir, out_dir)
        smoke = Smoke()
        try:
            run(smoke, args.addr)
        except Exception as error:  # a failure outside the checks is one failure more
            smoke.check("no unexpected error", False, repr(error))
    print(f"grpc smoke: {smoke.passed} passed, {smoke.failed} failed")
    return 1 if smoke.failed else 0


def run(smoke, addr):
    import grpc
    import synckit_pb2 as pb
    import synckit_pb2_grpc as rpc

    channel = grpc.insecure_channel(addr)
    grpc.channel_ready_future(channel).result(timeout=10)
    chat = rpc.ChatStub(channel)

    def auth(token):
        return [("authorization", "Bearer " + token)]

    # Fresh names: the script may run against a node that has seen it before.
    suffix = secrets.token_hex(3)
    alice, bob = "alice" + suffix, "bob" + suffix

    # CreateAccount, Login.
    for name in (alice, bob):
        chat.CreateAccount(pb.CreateAccountRequest(username=name, password=PASSWORD))
    smoke.check("CreateAccount", True)
    smoke.refused(
        "CreateAccount twice is ALREADY_EXISTS",
        lambda: chat.CreateAccount(pb.CreateAccountRequest(username=alice, password=PASSWORD)),
        grpc.StatusCode.ALREADY_EXISTS, "user_exists",
    )
    a = chat.Login(pb.LoginRequest(username=alice, password=PASSWORD))
    b = chat.Login(pb.LoginRequest(username=bob, password=PASSWORD))
    smoke.check("Login answers a 128-bit token", len(a.token) == 32 and len(b.token) == 32)
    smoke.refused(
        "a call without a token is UNAUTHENTICATED",
        lambda: chat.ReadMessages(pb.ReadMessagesRequest(limit=1)),
        grpc.StatusCode.UNAUTHENTICATED, "not_logged_in",
    )

    # ListAccounts.
    page = chat.ListAccounts(
        pb.ListAccountsRequest(pattern="*" + suffix, page_size=10), metadata=auth(a.token))
    smoke.check("ListAccounts", list(page.accounts) == [alice, bob], page)

    # Subscribe: bob's stream receives alice's message.
    deliveries = queue.Queue()
    stream = chat.Subscribe(pb.SubscribeRequest(), metadata=auth(b.token))

    def listen():
        try:
            for message in stream:
                deliveries.put(message)
        except grpc.RpcError:
            pass  # cancelled at the end

    # The stream is open once its headers arrived (the session takes pushes from then on).
    stream.initial_metadata()
    threading.Thread(target=listen, daemon=True).start()
    sent = chat.SendMessage(
        pb.SendMessageRequest(to=bob, text="Hello, Bob!"), metadata=auth(a.token))
    try:
        got = deliveries.get(timeout=10)
        smoke.check(
            "Subscribe delivers a message sent by another user",
            got.id == sent.id and getattr(got, "from") == alice and got.text == "Hello, Bob!",
            got,
        )
    except queue.Empty:
        smoke.check("Subscribe delivers a message sent by another user", False, "nothing in 10 s")
    stream.cancel()

    # SendMessage, ReadMessages, DeleteMessages (alice has no stream: messages wait for her).
    sent = chat.SendMessage(
        pb.SendMessageRequest(to=alice, text="hi", key="k-" + suffix), metadata=auth(b.token))
    again = chat.SendMessage(
        pb.SendMessageRequest(to=alice, text="hi", key="k-" + suffix), metadata=auth(b.token))
    smoke.check("SendMessage with a key is stored once", sent.id == again.id)
    read = chat.ReadMessages(pb.ReadMessagesRequest(limit=10), metadata=auth(a.token))
    smoke.check("ReadMessages", [m.id for m in read.messages] == [sent.id], read)
    deleted = chat.DeleteMessages(pb.DeleteMessagesRequest(ids=[sent.id]), metadata=auth(a.token))
    smoke.check("DeleteMessages", deleted.deleted == 1, deleted)

    # The ledger: wait for the grants to be sealed.
    deadline = time.monotonic() + 20
    while True:
        balance = chat.GetBalance(pb.GetBalanceRequest(), metadata=auth(a.token))
        if balance.confirmed == 1000 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    smoke.check("GetBalance", balance.confirmed == 1000 and balance.pending == 0, balance)
    info = chat.ChainInfo(pb.ChainInfoRequest(), metadata=auth(a.token))
    smoke.check("ChainInfo", info.height >= 1 and len(info.tip) == 64, info)
    utxos = chat.ListUtxos(pb.ListUtxosRequest(), metadata=auth(a.token)).utxos
    smoke.check("ListUtxos", len(utxos) == 1 and utxos[0].amount == 1000, utxos)
    grant = utxos[0]
    tx = chat.GetTransaction(pb.GetTransactionRequest(txid=grant.tx), metadata=auth(a.token))
    smoke.check("GetTransaction", tx.txid == grant.tx and tx.HasField("block"), tx)
    block = chat.GetBlock(pb.GetBlockRequest(height=tx.block), metadata=auth(a.token))
    smoke.check("GetBlock", grant.tx in block.txids and len(block.hash) == 64, block)
    smoke.refused(
        "GetBlock of an unknown height is NOT_FOUND",
        lambda: chat.GetBlock(pb.GetBlockRequest(height=10**9), metadata=auth(a.token)),
        grpc.StatusCode.NOT_FOUND, "not_found",
    )

    transfer = chat.Transfer(pb.TransferRequest(to=bob, amount=100), metadata=auth(a.token))
    smoke.check("Transfer", len(transfer.txid) == 64, transfer)
    error = smoke.refused(
        "spending an output twice is FAILED_PRECONDITION double_spend",
        lambda: chat.SubmitTransaction(
            pb.SubmitTransactionRequest(
                inputs=[pb.Outpoint(tx=grant.tx, index=grant.index)],
                outputs=[pb.Output(to=bob, amount=1000)]),
            metadata=auth(a.token)),
        grpc.StatusCode.FAILED_PRECONDITION, "double_spend",
    )
    if error is not None:
        smoke.check("the double spend names the pooled transfer", transfer.txid in error.details())
    # Any of bob's outputs, sealed or still pooled (his grant may be in a later block than
    # alice's): a pooled output may be spent too.
    his = chat.ListUtxos(pb.ListUtxosRequest(), metadata=auth(b.token)).utxos[0]
    submitted = chat.SubmitTransaction(
        pb.SubmitTransactionRequest(
            inputs=[pb.Outpoint(tx=his.tx, index=his.index)],
            outputs=[pb.Output(to=alice, amount=10), pb.Output(to=bob, amount=his.amount - 10)]),
        metadata=auth(b.token))
    smoke.check("SubmitTransaction", len(submitted.txid) == 64, submitted)

    # Logout revokes the token; DeleteAccount needs an account without coins.
    chat.Logout(pb.LogoutRequest(), metadata=auth(b.token))
    smoke.refused(
        "a token after Logout is UNAUTHENTICATED",
        lambda: chat.GetBalance(pb.GetBalanceRequest(), metadata=auth(b.token)),
        grpc.StatusCode.UNAUTHENTICATED, "not_logged_in",
    )
    carol = "carol" + suffix
    chat.CreateAccount(pb.CreateAccountRequest(username=carol, password=PASSWORD))
    c = chat.Login(pb.LoginRequest(username=carol, password=PASSWORD))
    deadline = time.monotonic() + 20
    while chat.GetBalance(pb.GetBalanceRequest(), metadata=auth(c.token)).confirmed < 1000:
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    chat.Transfer(pb.TransferRequest(to=alice, amount=1000), metadata=auth(c.token))
    chat.DeleteAccount(pb.DeleteAccountRequest(password=PASSWORD), metadata=auth(c.token))
    smoke.refused(
        "a token after DeleteAccount is UNAUTHENTICATED",
        lambda: chat.GetBalance(pb.GetBalanceRequest(), metadata=auth(c.token)),
        grpc.StatusCode.UNAUTHENTICATED, "not_logged_in",
    )
    smoke.refused(
        "Login to the deleted account fails",
        lambda: chat.Login(pb.LoginRequest(username=carol, password=PASSWORD)),
        grpc.StatusCode.UNAUTHENTICATED, "auth_failed",
    )
    channel.close()


if __name__ == "__main__":
    sys.exit(main())
