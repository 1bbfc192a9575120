from uhved_tf.cli import run

run()
