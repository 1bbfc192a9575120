import sys

from uhved_tf.cli import main

sys.exit(main())
