"""The `efficientlab-client` command (TF Serving client)."""

from absl import app
from absl import flags

from efficientlab_tf.cli.main import fail

FLAGS = flags.FLAGS
PROGRAM = "efficientlab-client"  # Program name in the client's errors.


def define_client_flags():
    """Flags of the `efficientlab-client` command (idempotent)."""
    if "server" in FLAGS:
        return
    flags.DEFINE_string("server", "localhost:8501",
                        "TF Serving host:port (8501 REST, 8500 gRPC).")
    flags.DEFINE_string("model", "efficientlab", "Served model name.")
    flags.DEFINE_list("images", [], "Image files to segment.")
    flags.DEFINE_string("out_dir", "masks", "Folder for <stem>_mask.png files.")
    flags.DEFINE_enum("protocol", "rest", ["rest", "grpc"], "rest or grpc.")
    flags.DEFINE_enum("signature", "serve_bytes",
                      ["serve_bytes", "serving_default", "few_shot"],
                      "serve_bytes: encoded files (b64 over REST); "
                      "serving_default: decoded pixels; few_shot: adapt to "
                      "--support inside the request.")
    flags.DEFINE_string("support", None,
                        "few_shot: folder of <n>.jpg + <n>.png support pairs.")
    flags.DEFINE_float("lr", None, "few_shot: request omega lr (with --steps; "
                       "the few_shot_omega signature).")
    flags.DEFINE_integer("steps", None, "few_shot: request omega steps (with --lr).")
    flags.DEFINE_string("label", None,
                        "Version label to call (models.config: stable, canary).")


def client_main(argv):
    """Entry point of `efficientlab-client`."""
    from efficientlab_tf.export import client

    if len(argv) > 1:
        fail(f"unexpected positional arguments {argv[1:]}; use --images=a,b.",
             PROGRAM)
    if not FLAGS.images:
        fail("--images is empty: give image files to segment.", PROGRAM)
    try:
        written = client.run_client(
            FLAGS.server, FLAGS.model, FLAGS.images, FLAGS.out_dir,
            FLAGS.protocol, FLAGS.signature, FLAGS.support, FLAGS.lr,
            FLAGS.steps, FLAGS.label)
    except (ValueError, TypeError, FileNotFoundError, ConnectionError,
            RuntimeError, ImportError) as e:
        fail(str(e), PROGRAM)
    for path in written:
        print(path)


def client_entry():
    """console_scripts entry point."""
    define_client_flags()
    app.run(client_main)
