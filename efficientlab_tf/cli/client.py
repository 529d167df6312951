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


def client_main(argv):
    """Entry point of `efficientlab-client`."""
    from efficientlab_tf.export import client

    if len(argv) > 1:
        fail(f"unexpected positional arguments {argv[1:]}; use --images=a,b.",
             PROGRAM)
    if not FLAGS.images:
        fail("--images is empty: give image files to segment.", PROGRAM)
    try:
        written = client.run_client(FLAGS.server, FLAGS.model, FLAGS.images,
                                    FLAGS.out_dir, FLAGS.protocol)
    except (ValueError, TypeError, FileNotFoundError, ConnectionError,
            RuntimeError, ImportError) as e:
        fail(str(e), PROGRAM)
    for path in written:
        print(path)


def client_entry():
    """console_scripts entry point."""
    define_client_flags()
    app.run(client_main)
