from opea_media.cli import main

main()
