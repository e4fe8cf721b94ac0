def main() -> None:
    print("tocsin")
