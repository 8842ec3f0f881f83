from .bootstrap import create_app


def main() -> None:
    app = create_app()
    app.state.runtime.serve(app)


if __name__ == "__main__":
    main()
