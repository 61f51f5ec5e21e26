// Cutover's version, said in one place: `cutover --version` prints it (and the admin console will).

public enum CutoverVersion {
    public static let string = "0.1.0"
}
