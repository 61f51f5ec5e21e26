// When `cutover backfill` may run, from the proxy's view of the route, and what it tells the operator otherwise.
import Testing
@testable import CutoverCore

@Suite struct BackfillGuardTests {
    func refusal(_ direction: BackfillDirection, _ phase: String?, _ paused: String?) -> String? {
        BackfillGuard.refusal(route: "onboarding", direction: direction, phase: phase, paused: paused)
    }

    @Test func eachDirectionRunsOnlyPausedInThePhaseWhereItsTargetTakesNoWrites() {
        #expect(refusal(.forward, "legacy", "yes") == nil)
        #expect(refusal(.reverse, "new", "yes") == nil)
        for paused in ["no", "warming up", "flipping"] {
            #expect(refusal(.forward, "legacy", paused) != nil, "\(paused)")
            #expect(refusal(.reverse, "new", paused) != nil, "\(paused)")
        }
        for phase in ["dual-legacy", "dual-new", "new"] { #expect(refusal(.forward, phase, "yes") != nil, "\(phase)") }
        for phase in ["legacy", "dual-legacy", "dual-new"] { #expect(refusal(.reverse, phase, "yes") != nil, "\(phase)") }
        #expect(BackfillDirection.forward.source == .legacy && BackfillDirection.forward.target == .new)
        #expect(BackfillDirection.reverse.source == .new && BackfillDirection.reverse.target == .legacy)
    }

    @Test func aRefusalSaysWhereTheRouteIsAndTheCommandsThatGetItThere() {
        #expect(refusal(.forward, "dual-new", "no") == """
            route onboarding is in phase dual-new and not paused (no); backfill legacy → new runs only in phase legacy with the route paused, so that no client writes to new while its tables are replaced
            the commands, in order:
              cutover phase onboarding dual-legacy
              cutover phase onboarding legacy
              cutover pause onboarding
              cutover backfill onboarding
              cutover verify onboarding
              cutover phase onboarding dual-legacy
              cutover resume onboarding
            """)
        #expect(refusal(.reverse, "dual-new", "yes") == """
            route onboarding is in phase dual-new and paused; backfill new → legacy runs only in phase new with the route paused, so that no client writes to legacy while its tables are replaced
            the commands, in order:
              cutover phase onboarding new
              cutover backfill onboarding --reverse
              cutover verify onboarding
              cutover phase onboarding dual-new
              cutover resume onboarding
            """)
    }

    @Test func inTheOtherDirectionsPhaseTheTargetIsLiveSoTheAdviceIsTheOtherCopy() {
        let wipe = refusal(.forward, "new", "yes") ?? ""
        #expect(wipe.contains("in phase new, new is the live side: to copy it to legacy, run backfill --reverse instead"))
        #expect(wipe.contains("  cutover backfill onboarding --reverse\n") && !wipe.contains("cutover phase onboarding dual-new\n  cutover phase"),
                "no walk back from new that would drop its writes: \(wipe)")
        #expect(refusal(.reverse, "legacy", "no")?.contains("run backfill instead") == true)
    }

    @Test func aRouteTheProxyDoesNotHaveIsRefusedWithTheWayOut() {
        let unknown = refusal(.forward, nil, nil) ?? ""
        #expect(unknown.contains("the proxy has no route onboarding") && unknown.contains("--overwrite-live"))
    }
}
